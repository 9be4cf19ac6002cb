"""Multirun bookkeeping: each job leaves a result.json; at the end of the sweep a summary table.

`SweepSummary` is a Hydra callback (conf/hydra/default.yaml): after the last job it gathers every job's
result.json into `<sweep dir>/summary.csv`, one row per job sorted by val/loss, and prints it, draws the jobs'
curves in summary.png and, for a lever study (gptlab.ablation), writes ablation.md and ablation.png.

A multirun job that trains on several local devices (trainer=ddp, fsdp, or gpu with devices>1) runs as
a single run of its own in a child process (`run_as_own_run`): Lightning starts a job's extra ranks by
re-running the command line, and the command line of a sweep is the whole sweep.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from gptlab import ablation
from gptlab.cli import USER_ERRORS, one_line
from gptlab.config import unescape
from gptlab.errors import GptlabError
from gptlab.files import atomic_write
from gptlab.lit.safety import NonFiniteLoss
from gptlab.plot import plot
from gptlab.rundir import RunDir

# set in the environment of a job's own run, so that it records a failure in result.json as a sweep job does
SWEEP_JOB_ENV = "GPTLAB_SWEEP_JOB"

RESULT = RunDir(Path(".")).result.name  # the file a job leaves in its run dir
RESULT_KEYS = ("val/loss", "val/bpc", "val/bpb", "best_step", "steps", "params", "perf/run_tokens_per_s")  # from train's metrics
COLUMNS = ["job", "status", "val/loss", "val/bpc", "val/bpb", "best_step", "steps", "params", "perf/run_tokens_per_s",
           "wall_s", "overrides", "error"]


def write_result(out_dir: Path, name: str = RESULT, **result: Any) -> None:
    # atomic: a process killed mid-write (a DDP rank taken down with its job) leaves no half a file
    atomic_write(out_dir / name, lambda f: f.write(json.dumps(result, indent=1)), mode="w")


def read_result(out_dir: Path, name: str = RESULT) -> dict | None:
    try:
        return json.loads((out_dir / name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_results(sweep_dir: Path) -> list[dict]:
    rows = [{**r, "job": f.parent.name} for f in sweep_dir.glob(f"*/{RESULT}")
            if (r := read_result(f.parent)) is not None]
    return sorted(rows, key=lambda r: (r.get("val/loss") is None or math.isnan(r["val/loss"]), r.get("val/loss") or 0))


def format_table(rows: list[dict]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
        if isinstance(v, list):
            return " ".join(unescape(o) for o in v)
        return "" if v is None else str(v)

    cols = [c for c in COLUMNS if c != "error" or any(r.get("error") for r in rows)]
    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table)


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # sweeper plugins' chatter (Optuna's database layer lists its plugins; Optuna colours its own lines)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        with contextlib.suppress(ImportError):
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = read_results(sweep_dir)
        if not rows:
            return
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({**r, "overrides": " ".join(unescape(o) for o in r.get("overrides", []))})
        failed = sum(r.get("status") != "ok" for r in rows)
        print(f"\nsweep of {len(rows)} jobs ({failed} failed), best first: {sweep_dir / 'summary.csv'}")
        print(format_table(rows))
        try:  # the jobs' curves side by side (needs matplotlib: the viz extra)
            print(f"curves: {plot(sweep_dir, sweep_dir / 'summary.png')}")
        except GptlabError as e:
            print(f"(no summary.png: {e})")
        if ablation.is_study(rows):  # lever lists over seeds (experiment=ablation): the study's table
            md, png = ablation.write(sweep_dir, rows)
            print(f"\n{md.read_text(encoding='utf-8')}\nablation: {md}" + (f", {png}" if png else ""))


def relaunches_command(trainer_kwargs: dict) -> bool:
    """Would Lightning start this trainer's other ranks by re-running the command line?

    True for DDP-style strategies over several devices of one machine; False on one device, and where
    the ranks are started by someone else (SLURM, torchrun). (ddp_spawn counts as True: running such a
    job as a run of its own is merely a little slower, never wrong.)
    """
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the job builds its own Trainer and says all this once
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = L.Trainer(**trainer_kwargs, logger=False, callbacks=[], enable_progress_bar=False)
    finally:
        quiet.setLevel(level)
    strategy = trainer.strategy
    launcher = getattr(strategy, "launcher", None)
    external = getattr(getattr(strategy, "cluster_environment", None), "creates_processes_externally", False)
    return trainer.num_devices > 1 and launcher is not None and not launcher.is_interactive_compatible \
        and not external


def records_result(relaunches: Callable[[DictConfig], bool]):
    """Wrap the training task (as lightning-hydra-template's task_wrapper): leave result.json in the run
    dir and return the final val loss (what a sweeper minimises).

    In a multirun a failing job (bad settings, NaN, out of memory) is recorded as failed and the sweep
    goes on with the next job; a single run fails loudly. A multirun job on several local devices runs
    as a run of its own in a child process (`run_as_own_run`).
    """

    def decorate(task: Callable[[DictConfig], dict]) -> Callable[[DictConfig], float]:
        @functools.wraps(task)
        def wrapper(cfg: DictConfig) -> float:
            hc = HydraConfig.get()
            out_dir = Path(cfg.paths.output_dir)
            record = {"overrides": list(hc.overrides.task)}
            sweep_job = hc.mode == RunMode.MULTIRUN
            own_run_of_job = os.environ.get(SWEEP_JOB_ENV)  # we are that child: record failures as the job's
            start = time.perf_counter()
            try:
                if sweep_job and relaunches(cfg):
                    loss = run_as_own_run(hc, out_dir).get("val/loss")
                    return math.nan if loss is None else loss
                metrics = task(cfg)
            except Exception as ex:
                if not (sweep_job or own_run_of_job):
                    raise
                message = one_line(ex) if isinstance(ex, USER_ERRORS) else f"{type(ex).__name__}: {ex}"
                status = "nan" if isinstance(ex, NonFiniteLoss) else "failed"  # a NaN loss: often the lr
                failed = dict(status=status, error=message, wall_s=time.perf_counter() - start,
                              failed_at=time.time(), **record)
                if rank_zero_only.rank == 0:
                    write_result(out_dir, **failed)
                elif own_run_of_job:  # in case rank 0 is killed before it can write: the sweep reads this
                    write_result(out_dir, name=f"result.rank{rank_zero_only.rank}.json", **failed)
                if own_run_of_job:
                    raise  # a non-zero exit, so the other ranks stop too
                print(f"error: job {hc.job.num} failed: {message}", file=sys.stderr)
                return math.nan
            loss = metrics.get("val/loss", math.nan)
            if rank_zero_only.rank == 0 and out_dir.is_dir():  # (debug=fast takes its folder away)
                write_result(out_dir, status="ok" if math.isfinite(loss) else "nan", wall_s=time.perf_counter() - start,
                             **{k: metrics.get(k) for k in RESULT_KEYS}, **record)
            return loss

        return wrapper

    return decorate


def own_run_command(hc: HydraConf) -> list[str]:
    """The command line of this job alone, as a single run in the job's own dir."""
    cmd = [sys.executable, "-m", "gptlab.train", f"--config-name={hc.job.config_name}"]
    for src in hc.runtime.config_sources:
        if src.provider == "command-line":  # --config-dir
            cmd.append(f"--config-dir={src.path}")
        elif src.provider == "main" and (src.schema, src.path) != ("pkg", "gptlab.conf"):  # --config-path
            cmd.append(f"--config-path={'pkg://' if src.schema == 'pkg' else ''}{src.path}")
    cmd += list(hc.overrides.task)
    # the user's other hydra overrides (logging, verbosity) apply, but not how the sweep runs its jobs
    sweep_keys = ("hydra.mode", "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher",
                  "hydra/launcher", "hydra.job.num", "hydra.job.id", "hydra.run", "hydra.output_subdir")
    cmd += [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(sweep_keys)]
    return cmd + ["hydra.mode=RUN", f'hydra.run.dir="{hc.runtime.output_dir}"', "hydra.output_subdir=null"]


def run_as_own_run(hc: HydraConf, out_dir: Path) -> dict:
    """Run this multirun job as a single run in a child process; return the result it leaves in out_dir.

    From there on it is exactly the single-run path: Lightning re-runs the child's command for each
    extra rank, with hydra.run.dir pointing at this job's dir.
    """
    for stale in out_dir.glob("result*.json"):  # a reused sweep dir: never mistake an old result for this one
        stale.unlink()
    cmd = own_run_command(hc)
    print(f"job {hc.job.num} trains on several devices, so it runs as a run of its own:\n  {shlex.join(cmd)}",
          flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # earlier in-place jobs of this sweep: hand their cached GPU memory back
    start = time.perf_counter()
    code = run_in_own_group(cmd, env={**os.environ, SWEEP_JOB_ENV: str(hc.job.num)}, cwd=hc.runtime.cwd)
    result = read_result(out_dir)
    if result is None or result.get("status") == "failed":
        # the first rank to fail says why; the others fail after it (a peer gone, killed by Lightning)
        ranks = [read_result(out_dir, f.name) for f in out_dir.glob("result.rank*.json")]
        failures = [r for r in [result, *ranks] if r and r.get("status") == "failed"]
        if failures:
            result = min(failures, key=lambda r: r.get("failed_at", math.inf))
        else:
            how = f"were killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            result = {"status": "failed", "error": f"the job's processes {how} (out of memory?); logs: {out_dir}",
                      "wall_s": time.perf_counter() - start, "overrides": list(hc.overrides.task)}
        write_result(out_dir, **result)
        if not failures:
            print(f"error: job {hc.job.num} failed: {result['error']}", file=sys.stderr)
    return result


def run_in_own_group(cmd: list[str], env: dict[str, str], cwd: str) -> int:
    """Run cmd in a process group of its own and wait for it; return its exit status.

    When this returns, everything the command started is gone too: a DDP rank left behind by a
    killed rank 0 would otherwise wait in a collective for half an hour, holding its GPU and port.
    Ctrl-C (which reaches only this process: the group has a session of its own) and SIGTERM stop
    the whole group.
    """
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True)
    restore = None
    if threading.current_thread() is threading.main_thread():
        restore = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return proc.wait()
    except BaseException:
        _signal_group(proc.pid, signal.SIGTERM)  # let Lightning stop the ranks cleanly, for a while
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        raise
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
        deadline = time.monotonic() + 3  # ranks that are finishing normally get a moment to exit
        while _signal_group(proc.pid, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send sig to the group; False if none of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
