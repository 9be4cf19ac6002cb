"""The modern recipe against the GPT-2 baseline, side by side on this machine:

    python scripts/bench_levers.py                  # experiment=shakespeare_cpu vs experiment=shakespeare_cpu_modern
    python scripts/bench_levers.py --runs 1         # a quicker look: one run of each in part 1
    python scripts/bench_levers.py -- data.batch_size=64   # extra overrides for both, after --

Part 1, time: each recipe's 2-minute run, 3 of each alternating (baseline, modern, baseline, ...; seeds 1, 2, 3),
each a fresh process of the real CLI timed from start to exit. The gain is the baseline's median val/loss less
the modern recipe's.
Part 2, steps: both recipes with no time budget and the same step budget S, the baseline's median step count
of part 1 (so its lr schedule is the one its 2 minutes gave it), seed 1, validation every S/20 steps. The ratio is
the step at which the modern recipe's val/loss first reaches the baseline's final val/loss (linear between
evaluations) over S.

Both are printed with their parameter counts (the targets compare models within 10% of each other). The last
two lines are `steps to the baseline's loss: R` (target <= 0.7) and `2-minute val/loss gain: G` (target >= 0.04).
The table goes into results/<machine kind>.json (the overrides show in its command; scripts/results.py;
--no-record: not).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # bench_recipe, beside this file
from bench_recipe import prepare, run  # noqa: E402
from results import add_flag, record  # noqa: E402

BASE, MODERN = "shakespeare_cpu", "shakespeare_cpu_modern"


def val_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    from gptlab.rundir import RunDir
    from gptlab.viz.curves import read_curves

    (log,) = [p for p in RunDir(run_dir).logs.glob("*") if p.is_dir()]
    steps, _, values = read_curves(log, "").series["val/loss"]
    return steps, values


def first_step_at(target: float, steps: list[int], values: list[float]) -> float | None:
    """The step at which the curve first comes down to target, linear between evaluations; None: never."""
    prev = None
    for s, v in zip(steps, values):
        if v <= target:
            if prev is None:
                return float(s)
            (s0, v0) = prev
            return s0 + (s - s0) * (v0 - target) / (v0 - v)
        prev = (s, v)
    return None


def parameters(run_dir: Path) -> int:
    """The model's parameter count, as the run recorded it (its result.json)."""
    import json

    from gptlab.rundir import RunDir

    return json.loads(RunDir(run_dir).result.read_text())["params"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each recipe in part 1")
    ap.add_argument("extra", nargs="*", help="more overrides for both recipes, after --")
    add_flag(ap)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        for e in (BASE, MODERN):
            prepare(e, args.extra, out)
        print(f"part 1: the 2-minute runs, {args.runs} of each, alternating", flush=True)
        timed: dict[str, list] = {BASE: [], MODERN: []}
        for i in range(args.runs):
            for e in (BASE, MODERN):
                timed[e].append(run(e, i + 1, args.extra, out, name=f"{e}-seed{i + 1}"))
        loss = {e: statistics.median(r.loss for r in timed[e]) for e in timed}
        steps = {e: int(statistics.median(r.steps for r in timed[e])) for e in timed}
        for e in timed:
            print(f"  {e}: val/loss median {loss[e]:.4f}, {steps[e]:,} steps median")
        sizes = {e: parameters(Path(out) / f"{e}-seed1") for e in timed}
        print(f"  parameters: baseline {sizes[BASE]:,}, modern {sizes[MODERN]:,} "
              f"({sizes[MODERN] / sizes[BASE] - 1:+.1%})", flush=True)

        S = steps[BASE]
        every = max(S // 20, 1)
        print(f"part 2: both recipes for {S:,} steps (no time budget), validation every {every} steps", flush=True)
        budget = ["trainer.max_time=null", f"trainer.max_steps={S}", f"trainer.val_check_interval={every}",
                  "sample_tokens=0", "~callbacks.text_samples"]
        final = {}
        for e in (BASE, MODERN):
            final[e] = run(e, 1, [*args.extra, *budget], out, name=f"{e}-steps")
        target = final[BASE].loss
        reached = first_step_at(target, *val_curve(Path(out) / f"{MODERN}-steps"))
    print(f"  baseline's val/loss after {S:,} steps: {target:.4f}; the modern recipe reaches it at step "
          f"{'never' if reached is None else f'{reached:,.0f}'} (its own after {S:,}: {final[MODERN].loss:.4f})")
    ratio = "never" if reached is None else f"{reached / S:.2f}"
    last_lines = f"steps to the baseline's loss: {ratio}\n2-minute val/loss gain: {loss[BASE] - loss[MODERN]:.3f}"
    print(last_lines)
    if not args.no_record:
        budget = timed[BASE][0].budget_s
        seeds = " / ".join(str(i + 1) for i in range(args.runs))
        rows = [[f"{f'{budget:.0f} s' if budget else 'no'} time budget, seeds {seeds}: steps",
                 *(" / ".join(f"{r.steps:,}" for r in timed[e]) for e in timed)],
                ["the same runs: val/loss",
                 *(" / ".join(f"{r.loss:.4f}" for r in timed[e]) + f" (median **{loss[e]:.4f}**)" for e in timed)],
                [f"{S:,} steps, no time budget: val/loss, wall",
                 *(f"{final[e].loss:.4f}, {final[e].wall:.1f} s" for e in timed)],
                ["parameters", *(f"{sizes[e]:,}" for e in timed)]]
        columns = ["", f"the recipe (experiment={BASE})", f"the modern recipe (experiment={MODERN})"]
        record("levers", {"columns": columns, "rows": rows}, last_line=last_lines)


if __name__ == "__main__":
    main()
