"""Run a training recipe several times with different seeds; report each run's wall time and val/loss.

    python scripts/bench_recipe.py                                   # experiment=shakespeare_cpu, seeds 1 2 3
    python scripts/bench_recipe.py --experiment shakespeare_nanogpt_cpu
    python scripts/bench_recipe.py --seeds 1 -- trainer.max_time=00:00:01:00   # extra overrides after --

Each run is the real CLI in a fresh process (`python -m gptlab.train experiment=... seed=S`), timed from
start to exit, so the time includes Python start-up, loading the cached token files, every validation
and the final sample. The token files are built once before the first timed run. Each run's wall time is
checked against its trainer.max_time (as the start block states it): a run keeps its budget when it ends
within 10% + 15 s of it. It also prints the precision the run chose (trainer.precision=auto says why).
Last line: `recipe val/loss median: X.XXX in Y s median (budget Z s: kept by N of N runs)`. The table goes into
results/<machine kind>.json, key the experiment (the overrides show in its command; scripts/results.py;
--no-record: not).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from results import add_flag, record


@dataclass
class Run:
    loss: float
    steps: int
    wall: float  # seconds, process start to exit
    budget_s: Optional[float]  # trainer.max_time as the start block states it; None: no time budget
    precision: str  # as the start block states it, with auto's reason


def run(experiment: str, seed: int, extra: list[str], out_dir: str, name: str = "") -> Run:
    """One training run in a fresh process of the real CLI, in out_dir/<name or seedS>; one line printed."""
    name = name or f"seed{seed}"
    cmd = [sys.executable, "-m", "gptlab.train", f"experiment={experiment}", f"seed={seed}",
           f"hydra.run.dir={out_dir}/{name}", *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    m = re.search(r"^step (\d+): val/loss ([0-9.]+)", proc.stdout, re.M)
    if not m:
        sys.exit(f"no final val/loss in the output of {' '.join(cmd)}")
    budget = re.search(r"^time +(\d+):(\d+):(\d+):(\d+)", proc.stdout, re.M)
    budget_s = None
    if budget:
        d, h, mi, s = (int(x) for x in budget.groups())
        budget_s = float(((d * 24 + h) * 60 + mi) * 60 + s)
    precision = re.search(r"precision (\S+)(?: \(auto: (.*)\))?$", proc.stdout, re.M)
    chosen = (precision.group(1) + (f" ({precision.group(2)})" if precision.group(2) else "")) if precision else ""
    result = Run(float(m.group(2)), int(m.group(1)), wall, budget_s, chosen)
    kept = "" if budget_s is None else f" (budget {budget_s:.0f} s: {'kept' if wall <= limit(budget_s) else 'OVER'})"
    print(f"{name}: {result.steps:5d} steps  val/loss {result.loss:.4f}  wall {wall:6.1f} s{kept}  {chosen}",
          flush=True)
    return result


def prepare(experiment: str, extra: list[str], out_dir: str) -> None:
    """Build (or find) the token cache outside the timed runs: the targets are for cached token files."""
    subprocess.run([sys.executable, "-m", "gptlab.train", f"experiment={experiment}", "trainer.max_steps=1",
                    "trainer.max_time=null", "sample_tokens=0", f"hydra.run.dir={out_dir}/prepare-{experiment}",
                    *extra],
                   check=True, capture_output=True, env={**os.environ})


def limit(budget_s: float) -> float:
    """The wall time a run with this trainer.max_time may take: 10% + 15 s over (start-up and exit are the
    process's, not the run's)."""
    return budget_s * 1.1 + 15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="shakespeare_cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("extra", nargs="*", help="more overrides, after --")
    add_flag(ap)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        prepare(args.experiment, args.extra, out)
        results = [run(args.experiment, s, args.extra, out) for s in args.seeds]
    losses, walls, budgets = [r.loss for r in results], [r.wall for r in results], [r.budget_s for r in results]
    kept = sum(b is not None and w <= limit(b) for w, b in zip(walls, budgets))
    budget = f" (budget {budgets[0]:.0f} s: kept by {kept} of {len(walls)} runs)" if budgets[0] is not None else ""
    last_line = (f"recipe val/loss median: {statistics.median(losses):.3f} in {statistics.median(walls):.0f} s "
                 f"median{budget}")
    print(last_line)
    if not args.no_record:
        rows = [[str(seed), f"{r.steps:,}", f"{r.loss:.4f}", f"{r.wall:.1f} s",
                 "" if r.budget_s is None else
                 f"{r.budget_s:.0f} s: {'kept' if r.wall <= limit(r.budget_s) else 'OVER'}",
                 r.precision] for seed, r in zip(args.seeds, results)]
        rows.append(["median", f"{statistics.median(r.steps for r in results):,.0f}",
                     f"**{statistics.median(losses):.3f}**", f"{statistics.median(walls):.0f} s",
                     f"kept by {kept} of {len(walls)}" if budgets[0] is not None else "", ""])
        record("recipe", {"columns": ["seed", "steps", "val/loss", "wall", "budget", "precision"], "rows": rows},
               key=args.experiment, last_line=last_line)


if __name__ == "__main__":
    main()
