#!/usr/bin/env python
"""How long a command takes before it does anything: `--help` and a typo, answered before Lightning is imported.

Each command line runs as a fresh process --repeats times (median wall time, exit status checked); the reference,
in the same run, is `python -c "import lightning"`: what every command paid before it could answer (the ratio is
the command's time over it). Run it on an idle machine: the target is <= 2 s for `gptlab generate --help` and a
typo on an idle 2-core CPU.

    python scripts/bench_start.py [--repeats 5]

Last line: `generate --help S s, a typo S s (import lightning: S s)`. The table goes into results/<machine kind>.json
(scripts/results.py; --no-record: not).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import add_flag, record  # noqa: E402

GPTLAB = [sys.executable, "-m", "gptlab"]
LINES = [  # (what, argv, the exit status it must end with)
    ("gptlab generate --help", [*GPTLAB, "generate", "--help"], 0),
    ("gptlab generate promt=x (a typo)", [*GPTLAB, "generate", "promt=x"], 2),
    ("gptlab train --help", [*GPTLAB, "train", "--help"], 0),
    ("gptlab train modle.n_layer=2 (a typo)", [*GPTLAB, "train", "modle.n_layer=2"], 2),
    ("gptlab train lever=[rmsnrom] (a typo)", [*GPTLAB, "train", "lever=[rmsnrom]"], 2),
    ("python -c \"import torch\" (what every command imports)", [sys.executable, "-c", "import torch"], 0),
]
REFERENCE = ("python -c \"import lightning\" (the reference)", [sys.executable, "-c", "import lightning"], 0)


def seconds(argv: list[str], status: int, repeats: int) -> float:
    """Median wall time of a fresh process running argv; each run must exit with `status`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if r.returncode != status:
            sys.exit(f"{' '.join(argv)} exited {r.returncode}, not {status}: {r.stderr[-500:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    add_flag(parser)
    args = parser.parse_args()
    seconds(LINES[0][1], 0, 1)  # a first run fills the OS's file cache, which every later one finds warm
    ref = seconds(REFERENCE[1], 0, args.repeats)
    rows = []
    for what, argv, status in LINES:
        t = seconds(argv, status, args.repeats)
        rows.append([what, f"{t:.2f} s", f"{t / ref:.2f}"])
        print(f"{what:<44}{t:6.2f} s  {t / ref:.2f} x import lightning", flush=True)
    rows.append([REFERENCE[0], f"{ref:.2f} s", "1.00"])
    print(f"{REFERENCE[0]:<44}{ref:6.2f} s")
    last_line = f"generate --help {rows[0][1]}, a typo {rows[1][1]} (import lightning: {ref:.2f} s)"
    print(last_line)
    if not args.no_record:
        record("start", {"columns": ["command", f"median of {args.repeats}", "/ import lightning"], "rows": rows},
               last_line=last_line, notes="each a fresh process, the file cache warm")


if __name__ == "__main__":
    main()
