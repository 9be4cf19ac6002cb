#!/usr/bin/env python
"""SFT, then RL from it, in one process: the README's assistant recipe end to end, judged on the held-out tasks.

    python scripts/bench_rl.py                                   # base (2 min) + SFT (9 min) + RL (10 min)
    python scripts/bench_rl.py --base outputs/base               # from a base model already trained
    python scripts/bench_rl.py --sft-time 00:00:04:40 --rl-time 00:00:05:12   # a CPU kind reproduced, time scaled

Steps: the tasks of scripts/make_tasks.py (seed 0, 50,000 conversations) in OUT/tasks; without --base, the first
command's model (experiment=shakespeare_cpu) in OUT/base; experiment=sft_tasks from it in OUT/sft; experiment=rl_tasks
from that in OUT/rl. Each run is the real `train(cfg)` on the composed config, timed from its start to its return;
both assistants are scored by `gptlab eval`'s exact match on OUT/tasks/test.jsonl (greedy, every answer). Prints the
CPU, the precision each run chose, the table per task, and as its last line `rl/sft errors: R` (the held-out errors
after RL over those before: 0.5 means RL removed half of them). The table goes into results/<machine kind>.json
(the times and overrides show in its command; scripts/results.py; --no-record: not).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from typing import Optional
from pathlib import Path

from results import add_flag, record

REPO = Path(__file__).resolve().parents[1]


def cpu() -> str:
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    import torch

    return f"{name}, {torch.get_num_threads()} threads, torch {torch.__version__} " \
           f"(ATen CPU capability {torch.backends.cpu.get_cpu_capability()})"


def trained(experiment: str, out: Path, *overrides: str) -> tuple[dict, float]:
    """One run of the real training function on the composed config; its metrics and wall time."""
    from gptlab.config import composed
    from gptlab.train import train

    cfg = composed("train", [f"experiment={experiment}", f"paths.output_dir={out}", *overrides])
    started = time.monotonic()
    metrics = train(cfg, started=started)
    return metrics, time.monotonic() - started


def prepared(out: Optional[str], base: Optional[str], prefix: str) -> tuple[Path, Path, Path]:
    """The runs' folder, the task set in it (made once) and the base run (the first command's model, trained
    first unless given)."""
    folder = Path(out or tempfile.mkdtemp(prefix=prefix)).resolve()
    print(f"cpu: {cpu()}\nout: {folder}", flush=True)
    tasks = folder / "tasks"
    if not (tasks / "test.jsonl").is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_tasks.py"), f"out={tasks}"], check=True)
    start = Path(base).resolve() if base else folder / "base"
    if not base:
        trained("shakespeare_cpu", start, "sample_tokens=0")
    return folder, tasks, start


def compared(before: dict, after: dict, names: tuple[str, str]) -> list[list[str]]:
    """Two evals' exact match per task and over all answers, printed, and as the rows of the recorded table."""
    print(f"\n{'task':<14}{names[0]:>8}{names[1]:>8}{'change':>9}")
    rows = []
    pairs = [(task, old, after["exact_match_by_task"][task]) for task, old in before["exact_match_by_task"].items()]
    for task, old, new in [*pairs, ("all answers", before["exact_match"], after["exact_match"])]:
        print(f"{task:<14}{old:8.1%}{new:8.1%}{(new - old) * 100:+8.1f}")
        b = "**" if task == "all answers" else ""  # the total in bold
        rows.append([f"{b}{task}{b}", f"{b}{old:.1%}{b}", f"{b}{new:.1%}{b}", f"{(new - old) * 100:+.1f}"])
    return rows


def exact_match(run: Path, test: Path) -> dict:
    from gptlab import eval as evaluate
    from gptlab.config import composed

    return evaluate.run(composed("eval", [f"ckpt_path={run}", "data=chat", f"data.path={test}"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="a trained base run (default: train experiment=shakespeare_cpu first)")
    p.add_argument("--out", help="folder for the runs (default: a temporary one)")
    p.add_argument("--sft-time", default="00:00:09:00", help="trainer.max_time of the SFT run")
    p.add_argument("--rl-time", default="00:00:10:00", help="trainer.max_time of the RL run")
    p.add_argument("overrides", nargs="*", help="overrides for the RL run (after --), e.g. optim.lr=1e-3")
    add_flag(p)
    args = p.parse_args()
    out, tasks, base = prepared(args.out, args.base, "bench_rl-")
    _, sft_s = trained("sft_tasks", out / "sft", f"init_from={base}", f"data.path={tasks}",
                       f"trainer.max_time={args.sft_time}", "sample_tokens=0")
    _, rl_s = trained("rl_tasks", out / "rl", f"init_from={out / 'sft'}", f"data.path={tasks}",
                      f"trainer.max_time={args.rl_time}", "sample_tokens=0", *args.overrides)
    before, after = exact_match(out / "sft", tasks / "test.jsonl"), exact_match(out / "rl", tasks / "test.jsonl")

    rows = compared(before, after, ("SFT", "SFT+RL"))
    worst = min(after["exact_match_by_task"][t] - v for t, v in before["exact_match_by_task"].items())
    print(f"SFT {sft_s / 60:.1f} min ({before['step']:,} steps), RL {rl_s / 60:.1f} min "
          f"({after['step']:,} steps): {(sft_s + rl_s) / 60:.1f} min; the largest drop of a task: {-worst * 100:.1f} "
          "points" if worst < 0 else f"SFT {sft_s / 60:.1f} min, RL {rl_s / 60:.1f} min: no task lost any")
    ratio = (1 - after["exact_match"]) / max(1e-9, 1 - before["exact_match"])
    last_line = f"rl/sft errors: {ratio:.2f}"
    print(last_line)
    if not args.no_record:
        columns = ["task", f"SFT, {sft_s / 60:.1f} min ({before['step']:,} steps)",
                   f"SFT + RL, {rl_s / 60:.1f} min ({after['step']:,} steps)", "change (points)"]
        record("rl", {"columns": columns, "rows": rows}, last_line=last_line,
               notes="from the base given by --base" if args.base else "")


if __name__ == "__main__":
    main()
