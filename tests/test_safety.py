"""No work lost: signals save the step and the run resumes from it, the clock saves too, a NaN stops the run
without touching the last good checkpoint, and a kill while saving leaves the previous checkpoint loadable.

The callbacks at the top are test-only faults, put into runs with `+callbacks.<name>._target_=test_safety...`
(the CLI subprocesses get tests/ on PYTHONPATH)."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from gptlab import checkpoint
from gptlab.errors import GptlabError
from gptlab.lit.safety import AtomicCheckpointIO
from gptlab.lit.trainer import parse_duration
from gptlab.train import build

from conftest import REPO


class Poison(L.Callback):
    """Turn the weights to NaN before the step after `step`, keeping a copy of last.ckpt as it was then."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            if trainer.is_global_zero and last.is_file():
                (last.parent / "last.before-nan").write_bytes(last.read_bytes())
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class SignalAt(L.Callback):
    """Send this process a signal once `step` steps are done."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class DieWhileSaving(L.Callback):
    """Kill the process (os._exit: no clean-up at all) half-way through writing the n-th last.ckpt."""

    def __init__(self, nth: int) -> None:
        self.nth, self.seen = nth, 0

    def setup(self, trainer, pl_module, stage) -> None:
        save = torch.save

        def half_then_die(obj, f, *args, **kwargs):
            if "last.ckpt" in (os.readlink(f"/proc/self/fd/{f.fileno()}") if hasattr(f, "fileno") else str(f)):
                self.seen += 1
                if self.seen == self.nth:
                    buf = io.BytesIO()
                    save(obj, buf, *args, **kwargs)
                    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    f.flush()
                    os._exit(137)
            return save(obj, f, *args, **kwargs)

        torch.save = half_then_die


class Slow(L.Callback):
    """Make each step take a while; whenever last.ckpt was rewritten, append its step to <run dir>/saves.txt."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self._mtime = seconds, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if last.is_file() and last.stat().st_mtime_ns != self._mtime:
            self._mtime = last.stat().st_mtime_ns
            with open(Path(trainer.default_root_dir) / "saves.txt", "a") as f:
                f.write(f"{torch.load(last, weights_only=True)['global_step']}\n")


STEPS = 40
RUN = ["model=nano", f"trainer.max_steps={STEPS}", "trainer.val_check_interval=20", "trainer.limit_val_batches=1",
       "data.batch_size=4", "sample_tokens=0", "callbacks.text_samples.max_new_tokens=5",
       "callbacks.progress_bar.mode=lines", "callbacks.progress_bar.every_n_steps=5", "logger.version=run"]


def run_args(*changes: str) -> list[str]:
    """RUN with some keys set otherwise (Hydra refuses a key given twice)."""
    keys = {c.split("=")[0] for c in changes}
    return [a for a in RUN if a.split("=")[0] not in keys] + list(changes)


def env(cache: Path) -> dict[str, str]:
    e = {**os.environ, "GPTLAB_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO / "tests")}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB", "SLURM_RESTART_COUNT"):
        e.pop(inherited, None)
    return e


def cli(cwd: Path, *args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptlab.train", *args], cwd=cwd, env=env(cache),
                          capture_output=True, text=True, timeout=300)


def interrupt(cwd: Path, sig: int, *args: str, cache: Path, at_step: int = 10, group: bool = True
              ) -> tuple[int, str, str]:
    """Start a run, send it `sig` once a progress line shows at_step or more; (exit status, stdout, stderr).
    group: to the whole process group, as Ctrl-C in a terminal does (DataLoader workers too); else rank 0 only."""
    err_file = cwd / f"stderr-{sig}.txt"
    with open(err_file, "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "gptlab.train", *args], cwd=cwd, env=env(cache), text=True,
                             stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        out = []
        try:
            for line in p.stdout:  # type: ignore[union-attr]
                out.append(line)
                if line.startswith("step ") and "/" in line and int(line.split()[1].split("/")[0]) >= at_step:
                    os.killpg(p.pid, sig) if group else os.kill(p.pid, sig)
                    break
            out.append(p.stdout.read())  # type: ignore[union-attr]
            p.wait(timeout=120)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    return p.returncode, "".join(out), err_file.read_text()


def the_run(cwd: Path) -> Path:
    (run,) = (cwd / "outputs").glob("*/*")
    return run


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> dict:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    r = cli(cwd, *RUN, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    return last(the_run(cwd))


def same_end(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] == STEPS
    for k, v in a["state_dict"].items():
        assert torch.allclose(v, b["state_dict"][k], atol=1e-5), k


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_step_and_the_resume_ends_as_an_uninterrupted_run(tmp_path, cache_dir, uninterrupted,
                                                                             sig):
    # SIGINT as a terminal's Ctrl-C sends it, to every process of the run (a DataLoader worker too)
    extra = ["data.num_workers=1"] if sig == signal.SIGINT else []
    code, out, err = interrupt(tmp_path, sig, *RUN, *extra, cache=cache_dir)
    run = the_run(tmp_path)
    assert code == 128 + sig, err[-2000:]
    step = last(run)["global_step"]
    assert 10 <= step < STEPS
    name = signal.Signals(sig).name
    assert f"interrupted by {name} at step {step}: saved {run / 'checkpoints' / 'last.ckpt'}" in out
    assert f"resume with:  python -m gptlab.train ckpt_path={run}" in out
    assert "Traceback" not in err and "--- sample" not in out

    r = cli(tmp_path, f"ckpt_path={run}", cache=cache_dir)  # the command the block gives
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((tmp_path / "outputs").glob("*/*")) == [run]
    same_end(last(run), uninterrupted)


def test_sigterm_under_ddp_saves_once_at_one_step_and_stops_every_rank(tmp_path, cache_dir):
    """Only rank 0 gets the signal: the ranks agree on it at a step's end, all take part in the save, rank 0
    writes the file and says so once."""
    code, out, err = interrupt(tmp_path, signal.SIGTERM, *run_args("trainer=ddp", "trainer.accelerator=cpu",
                               "trainer.devices=2", "trainer.max_steps=400"), cache=cache_dir, group=False)
    run = the_run(tmp_path)
    assert code == 143, err[-3000:]
    step = last(run)["global_step"]
    assert out.count("interrupted by SIGTERM") == 1 and f"interrupted by SIGTERM at step {step}:" in out
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(run) not in ps  # no rank outlived the run


def test_the_slurm_signal_saves_and_a_requeued_job_resumes_in_its_run_dir(cfg_factory, tmp_path, monkeypatch):
    from gptlab.train import train

    cfg = cfg_factory("trainer.val_check_interval=5", f"+callbacks.stop._target_={__name__}.SignalAt",
                      f"+callbacks.stop.signum={int(signal.SIGUSR1)}", "+callbacks.stop.step=7")
    with pytest.raises(SystemExit) as stopped:
        train(cfg)
    assert stopped.value.code == 128 + signal.SIGUSR1
    run = tmp_path / "run"
    assert last(run)["global_step"] == 7
    # SLURM starts a requeued job again with the same command, in the same run dir: it resumes from there
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    metrics = train(cfg, overrides=[])  # [] as from the command line: the job's own settings, as it recorded them
    assert metrics["steps"] == 20 and last(run)["global_step"] == 20


def test_a_nan_loss_stops_in_one_line_and_leaves_the_last_good_checkpoint_as_it_was(tmp_path, cache_dir):
    r = cli(tmp_path, *run_args("trainer.val_check_interval=5", f"+callbacks.nan._target_={__name__}.Poison",
                                "+callbacks.nan.step=12", "sample_tokens=50"), cache=cache_dir)
    run = the_run(tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: train/loss is NaN or Inf at step 13: training stopped; the last good "
                               f"checkpoint is {run / 'checkpoints' / 'last.ckpt'} (step 10)")
    assert "lower optim.lr" in lines[0] and "trainer.gradient_clip_val" in lines[0]
    ckpts = run / "checkpoints"
    assert (ckpts / "last.ckpt").read_bytes() == (ckpts / "last.before-nan").read_bytes()
    assert last(run)["global_step"] == 10 and "--- sample" not in r.stdout


def test_a_nan_job_of_a_sweep_is_recorded_as_nan_and_the_sweep_goes_on(tmp_path, cache_dir):
    r = cli(tmp_path, "-m", *run_args("trainer.max_steps=6", "trainer.val_check_interval=3",
                                      f"+callbacks.nan._target_={__name__}.Poison", "+callbacks.nan.step=3,1000"),
            cache=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs/multirun").glob("*/*")
    rows = {row["job"]: row for row in csv.DictReader(open(sweep / "summary.csv"))}
    assert rows["0"]["status"] == "nan" and "NaN or Inf at step 4" in rows["0"]["error"]
    assert rows["1"]["status"] == "ok" and rows["1"]["steps"] == "6"


def test_a_kill_while_saving_leaves_the_previous_checkpoint_and_the_run_resumes(tmp_path, cache_dir):
    r = cli(tmp_path, *run_args("trainer.val_check_interval=5", f"+callbacks.die._target_={__name__}.DieWhileSaving",
                                "+callbacks.die.nth=2"), cache=cache_dir)
    assert r.returncode == 137, r.stderr[-2000:]
    run = the_run(tmp_path)
    ckpts = run / "checkpoints"
    assert list(ckpts.glob(".last.ckpt.*.tmp"))  # the half-written file, never renamed over last.ckpt
    assert checkpoint.read(ckpts / "last.ckpt")["global_step"] == 5

    r = cli(tmp_path, f"ckpt_path={run}", "+callbacks.die=null", cache=cache_dir)  # the fault stays behind
    assert r.returncode == 0, r.stderr[-2000:]
    assert last(run)["global_step"] == STEPS and not list(ckpts.glob(".*.tmp"))


def test_resuming_from_a_truncated_checkpoint_is_one_line_naming_it(tmp_path, cache_dir):
    ckpts = tmp_path / "outputs" / "2024-01-01" / "00-00-00" / "checkpoints"
    ckpts.mkdir(parents=True)
    whole = (REPO / "tests" / "data" / "checkpoint_format1.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(whole[: len(whole) // 2])
    r = cli(tmp_path, f"ckpt_path={ckpts.parent}", cache=cache_dir)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith(f"error: {ckpts / 'last.ckpt'} is not a readable gptlab checkpoint")


def test_the_clock_saves_last_ckpt_between_validations(cfg_factory, tmp_path):
    from gptlab.train import train

    train(cfg_factory("checkpoint_every=00:00:00:01", "trainer.val_check_interval=1000", "trainer.max_steps=30",
                      f"+callbacks.slow._target_={__name__}.Slow", "+callbacks.slow.seconds=0.1"))
    # no validation before step 30 (the last one): the earlier last.ckpt files are the clock's
    saved = [int(s) for s in (tmp_path / "run" / "saves.txt").read_text().split()]
    assert any(step < 30 for step in saved), saved
    assert last(tmp_path / "run")["global_step"] == 30


def test_checkpoint_io_writes_whole_files_or_none(tmp_path, monkeypatch):
    io_ = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_.save_checkpoint({"step": 1}, path)

    class Boom(Exception):
        pass

    def fail(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise Boom

    with monkeypatch.context() as m:
        m.setattr(torch, "save", fail)
        with pytest.raises(Boom):
            io_.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1} and list(tmp_path.iterdir()) == [path]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as readable as any file the user writes


@pytest.mark.parametrize("text", ["10", "00:00:00:00", "1:2:3", "aa:00:00:01"])
def test_checkpoint_every_must_be_a_duration(text, cfg_factory):
    with pytest.raises(GptlabError, match=f"checkpoint_every={text} is not a duration DD:HH:MM:SS"):
        build(cfg_factory(f"checkpoint_every='{text}'"))
    assert parse_duration("00:01:00:05", "checkpoint_every") == 3605


def test_the_slurm_signal_requeues_the_job_where_lightning_runs_under_slurm(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    from gptlab.lit.safety import requeue_slurm_job

    scontrol = tmp_path / "scontrol"  # a stand-in that notes how it was called
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'called'}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "42")

    def trainer(env) -> SimpleNamespace:
        return SimpleNamespace(_accelerator_connector=SimpleNamespace(cluster_environment=env))

    assert requeue_slurm_job(trainer(LightningEnvironment())) is None and not (tmp_path / "called").exists()
    assert requeue_slurm_job(trainer(SLURMEnvironment(auto_requeue=False))) is None
    assert requeue_slurm_job(trainer(SLURMEnvironment())) == "42"
    assert (tmp_path / "called").read_text().split() == ["requeue", "42"]
