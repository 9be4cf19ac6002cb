"""Multirun bookkeeping: each job leaves a result.json; at the end of the sweep a summary table.

`SweepSummary` is a Hydra callback (conf/hydra/default.yaml): after the last job it gathers every job's
result.json into `<sweep dir>/summary.csv`, one row per job sorted by val/loss, and prints it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

COLUMNS = ["job", "status", "val/loss", "val/bpc", "best_step", "steps", "wall_s", "overrides", "error"]


def write_result(out_dir: Path, **result: Any) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))


def read_results(sweep_dir: Path) -> list[dict]:
    rows = []
    for f in sweep_dir.glob("*/result.json"):
        r = json.loads(f.read_text())
        r["job"] = f.parent.name
        rows.append(r)
    key = lambda r: (r.get("val/loss") is None or math.isnan(r["val/loss"]), r.get("val/loss") or 0.0)  # noqa: E731
    return sorted(rows, key=key)


def format_table(rows: list[dict]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
        if isinstance(v, list):
            return " ".join(v)
        return "" if v is None else str(v)

    cols = [c for c in COLUMNS if c != "error" or any(r.get("error") for r in rows)]
    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = read_results(sweep_dir)
        if not rows:
            return
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({**r, "overrides": " ".join(r.get("overrides", []))})
        failed = sum(r.get("status") != "ok" for r in rows)
        print(f"\nsweep of {len(rows)} jobs ({failed} failed), best first: {sweep_dir / 'summary.csv'}")
        print(format_table(rows))
