"""Multirun bookkeeping: each job leaves a result.json; at the end of the sweep a summary table.

`SweepSummary` is a Hydra callback (conf/hydra/default.yaml): after the last job it gathers every job's
result.json into `<sweep dir>/summary.csv`, one row per job sorted by val/loss, and prints it.

A multirun job that trains on several local devices (trainer=ddp, fsdp, or gpu with devices>1) runs as
a single run of its own in a child process (`run_as_own_run`): Lightning starts a job's extra ranks by
re-running the command line, and the command line of a sweep is the whole sweep.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.conf import HydraConf
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig

# set in the environment of a job's own run, so that it records a failure in result.json as a sweep job does
SWEEP_JOB_ENV = "GPTLAB_SWEEP_JOB"

COLUMNS = ["job", "status", "val/loss", "val/bpc", "best_step", "steps", "wall_s", "overrides", "error"]


def write_result(out_dir: Path, **result: Any) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))


def read_result(out_dir: Path) -> dict | None:
    f = out_dir / "result.json"
    return json.loads(f.read_text()) if f.is_file() else None


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


def relaunches_command(trainer_cfg: DictConfig) -> bool:
    """Would Lightning start this trainer's other ranks by re-running the command line?

    True for DDP-style strategies on one machine; False on one device, with ddp_spawn, and where the
    ranks are started by someone else (SLURM, torchrun), since then Lightning launches nothing.
    """
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # building the Trainer twice would print "GPU available: ..." twice
    try:
        trainer = instantiate(trainer_cfg, logger=False, callbacks=[], enable_progress_bar=False)
    finally:
        quiet.setLevel(level)
    return isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)


def own_run_command(hc: HydraConf, out_dir: Path) -> list[str]:
    """The command line of this job alone, as a single run in the job's own dir."""
    cmd = [sys.executable, "-m", "gptlab.train", f"--config-name={hc.job.config_name}"]
    cmd += [f"--config-dir={s.path}" for s in hc.runtime.config_sources if s.provider == "command-line"]
    cmd += list(hc.overrides.task)
    # the user's other hydra overrides (logging, verbosity) apply, but not how the sweep runs its jobs
    sweep_keys = ("hydra.mode", "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher",
                  "hydra/launcher", "hydra.job.num", "hydra.job.id", "hydra.run", "hydra.output_subdir")
    cmd += [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(sweep_keys)]
    return cmd + ["hydra.mode=RUN", f'hydra.run.dir="{out_dir}"', "hydra.output_subdir=null"]


def run_as_own_run(hc: HydraConf, out_dir: Path) -> dict:
    """Run this multirun job as a single run in a child process; return its result.json.

    From there on it is exactly the single-run path: Lightning re-runs the child's command for each
    extra rank, with hydra.run.dir pointing at this job's dir.
    """
    cmd = own_run_command(hc, out_dir)
    env = {**os.environ, SWEEP_JOB_ENV: str(hc.job.num)}
    if env.get("GPTLAB_TRACEBACK") == "0":
        env.pop("HYDRA_FULL_ERROR", None)  # set by gptlab.cli for itself, not the user's choice
    print(f"job {hc.job.num} trains on several devices, so it runs as a run of its own:\n  {shlex.join(cmd)}",
          flush=True)
    code = subprocess.run(cmd, env=env, cwd=hc.runtime.cwd).returncode
    result = read_result(out_dir)
    if result is None:  # it died before it could say why (killed, out of memory)
        result = {"status": "failed", "error": f"the job's processes exited with status {code}",
                  "overrides": list(hc.overrides.task)}
        write_result(out_dir, **result)
    return result
