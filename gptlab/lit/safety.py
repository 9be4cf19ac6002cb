"""No work lost (the whole story: docs/ARCHITECTURE.md, "No work lost"): `Safeguards` saves the last checkpoint at
the end of the step a signal arrived in and stops the run (`Interrupted`), and stops on a NaN or Inf loss before any
checkpoint is written from it (`NonFiniteLoss`); `clock_checkpoint` saves by the clock (Lightning's time-interval
ModelCheckpoint); `AtomicCheckpointIO` writes every checkpoint whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gptlab.errors import GptlabError
from gptlab.files import atomic_write
from gptlab.lit.internals import cluster_environment
from gptlab.lit.trainer import format_duration, parse_duration

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
INTERRUPT, NONFINITE = range(2)  # the per-step flags the ranks agree on


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through a temporary file and a rename: a kill at any moment leaves either
    the previous checkpoint or the new one. (Lightning's own "atomic" save stages the file in /tmp, from where
    the move is a copy when /tmp is another filesystem.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):  # Lightning's message, or a remote filesystem
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed while it saved
            stale.unlink(missing_ok=True)
        atomic_write(path, lambda f: torch.save(checkpoint, f))


class Interrupted(BaseException):
    """The run was stopped by a signal after saving its step (BaseException: like KeyboardInterrupt, not an
    error). `train` reports it and exits with 128 + the signal's number."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[Path], requeued: Optional[str] = None) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.checkpoint, self.requeued = signum, step, checkpoint, requeued

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def report(self, run_dir: str, command: str, time_left: Optional[float] = None, removed: bool = False) -> str:
        """What the person at the terminal needs: where the work is and the command that continues it (with
        the time it had left, for a run with a time budget: each start of a run has a budget of its own)."""
        name = signal.Signals(self.signum).name
        if self.checkpoint is None and self.step == 0:
            return f"\ninterrupted by {name} before training began: nothing saved" + \
                (", its run folder removed" if removed else "")
        if self.checkpoint is None:
            return f"\ninterrupted by {name} at step {self.step}: nothing saved (this run keeps no last checkpoint)"
        more = f" trainer.max_time={format_duration(time_left)}" if time_left is not None and time_left >= 1 else ""
        lines = [f"\ninterrupted by {name} at step {self.step}: saved {self.checkpoint}",
                 f"resume with:  {command} ckpt_path={shlex.quote(str(run_dir))}{more}"]
        if more:
            lines.append("(the time this run had left: trainer.max_time counts each start of a run on its own)")
        if self.requeued:
            lines.append(f"SLURM job {self.requeued} requeued: it resumes from there when it starts again")
        return "\n".join(lines)


@contextlib.contextmanager
def stops_on_signals() -> Iterator[None]:
    """Inside: Ctrl-C and SIGTERM raise `Interrupted` (nothing saved) instead of KeyboardInterrupt, which Lightning
    would turn into exit status 1 and a message of its own (preparing the data, say, before `Safeguards` is set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(signum, 0, None)

    before = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


class NonFiniteLoss(GptlabError):
    """The training loss became NaN or Inf; nothing was saved after it. (A sweep records the job as `nan`.)"""


def save_last(trainer: L.Trainer) -> Optional[Path]:
    """Write the run's last checkpoint now, where its ModelCheckpoint keeps it, so that `ckpt_path=RUN` finds it.
    Every rank must call this (Lightning's save has a barrier; rank 0 writes). None where the run keeps no last
    checkpoint (debug=fast, no ModelCheckpoint, save_last off)."""
    cb = trainer.checkpoint_callback
    if trainer.fast_dev_run or not isinstance(cb, ModelCheckpoint) or not cb.save_last or cb.dirpath is None:
        return None
    path = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    trainer.save_checkpoint(path)
    return path


def requeue_slurm_job(trainer: L.Trainer) -> Optional[str]:
    """Queue this SLURM job again, as Lightning's SLURMEnvironment does on its signal when auto_requeue is on
    (the default under SLURM); the job id, or None where Lightning does not run under SLURM or it failed."""
    env = cluster_environment(trainer)
    if not (isinstance(env, SLURMEnvironment) and env.auto_requeue and "SLURM_JOB_ID" in os.environ):
        return None
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return job if done.returncode == 0 else None


def clock_checkpoint(dirpath: str, every: Optional[str]) -> Optional[ModelCheckpoint]:
    """The last checkpoint every `every` (DD:HH:MM:SS) of training besides validation's saves; None: no clock saves."""
    if not every:
        return None
    return ModelCheckpoint(dirpath=dirpath, filename=ModelCheckpoint.CHECKPOINT_NAME_LAST, save_top_k=1,
                           enable_version_counter=False, train_time_interval=timedelta(
                               seconds=parse_duration(every, "checkpoint_every")))


class _AgreedFlags:
    """Per-step flags that every rank sees alike: the max over the ranks of each rank's own. On a CUDA device
    the answer is the previous call's, copied to the host without waiting (no host-device sync per step)."""

    def __init__(self) -> None:
        self._in_flight: Optional[tuple[torch.Tensor, torch.cuda.Event, int]] = None

    def exchange(self, trainer: L.Trainer, flags: torch.Tensor, step: int) -> Optional[tuple[list[float], int]]:
        """Send this call's flags (for `step`); return the flags now known and the step they belong to."""
        _max_over_ranks(trainer, flags)
        if flags.device.type != "cuda":
            return flags.tolist(), step
        known = self.wait()
        host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
        host.copy_(flags, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._in_flight = (host, done, step)
        return known

    def wait(self) -> Optional[tuple[list[float], int]]:
        """The flags still on their way to the host, waiting for them; None if there are none."""
        if self._in_flight is None:
            return None
        host, done, step = self._in_flight
        self._in_flight = None
        done.synchronize()
        return host.tolist(), step


def _max_over_ranks(trainer: L.Trainer, t: torch.Tensor) -> None:
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)


class Safeguards(Callback):
    """Stop on a signal with the step saved, stop on a non-finite loss (see the module's docstring)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None  # the first stop signal this process received
        self._pid = os.getpid()
        self._rank_zero = True
        self._training = False
        self._handlers: dict[int, Any] = {}  # the handlers ours replaced, put back at teardown
        self._flags = _AgreedFlags()
        self._stop = 0  # agreed: the signal to stop for, once every rank knows
        self._loss: Optional[torch.Tensor] = None  # the latest training loss
        self._step_seen = 0
        self._good: tuple[Optional[str], Optional[int]] = (None, None)  # the last checkpoint (path, step)

    # --- signals: noted by the handler, acted on at the end of a step ---

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker forked from this process: the main process saves and stops the run
        if not self._training:  # before training starts or after it ended: stop now, with nothing to save
            raise Interrupted(signum, self._step_seen, None)
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # Ctrl-C twice: stop at once, without saving
            return
        self.signum = signum
        if self._rank_zero:
            # os.write, not print: a handler that prints while the interrupted code prints raises an error
            again = " (Ctrl-C again: stop without saving)" if signum == signal.SIGINT else ""
            os.write(2, f"\n{signal.Signals(signum).name}: saving at the end of this step{again}\n".encode())

    def _install(self, signums: tuple[int, ...]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (a run inside a thread keeps the defaults)
        for s in signums:
            self._handlers.setdefault(s, signal.getsignal(s))
            signal.signal(s, self._on_signal)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # before the DataLoader workers are forked, so that they inherit a handler that leaves the decision to
        # the main process (a worker killed by SLURM's signal would take the run down with it); and before
        # Lightning's SLURM handler, which then stands aside (it saves inside the handler, in mid-step)
        if stage == "fit":
            self._pid, self._rank_zero = os.getpid(), trainer.is_global_zero
            env = cluster_environment(trainer)
            requeue = getattr(env, "requeue_signal", None) if isinstance(env, SLURMEnvironment) else None
            self._install(STOP_SIGNALS + ((requeue,) if requeue and requeue not in STOP_SIGNALS else ()))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has wrapped our SIGTERM handler in its own, which stops the ranks where each happens to be
        # (and then only at a step's end without a save): ours alone decides from here on
        self._install((signal.SIGTERM,))
        self._training = True
        self._step_seen = trainer.global_step
        if trainer.ckpt_path:  # a resumed run: the checkpoint it started from is good
            self._good = (str(trainer.ckpt_path), trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._act_on(trainer, self._flags.wait())  # the last step's flags, still on their way on a GPU
        self._training = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._training = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            for s, handler in self._handlers.items():
                signal.signal(s, handler)
        self._handlers.clear()

    # --- every step ---

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stepped = trainer.global_step != self._step_seen  # False inside a gradient accumulation
        self._step_seen = trainer.global_step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._loss = loss if isinstance(loss, torch.Tensor) else None
        flags = torch.zeros(2, device=pl_module.device)
        if self.signum:
            flags[INTERRUPT] = self.signum
        if self._loss is not None:
            flags[NONFINITE] = torch.logical_not(torch.isfinite(self._loss)).any()
        self._act_on(trainer, self._flags.exchange(trainer, flags, trainer.global_step + (not stepped)))
        if stepped and self._stop:
            path = save_last(trainer)  # on_save_checkpoint refuses weights a NaN has reached
            # SLURM's warning signal (neither Ctrl-C nor a plain kill): rank 0 queues the job again
            requeue = trainer.is_global_zero and self._stop not in (signal.SIGINT, signal.SIGTERM)
            raise Interrupted(self._stop, trainer.global_step, path, requeue_slurm_job(trainer) if requeue else None)

    def _act_on(self, trainer: L.Trainer, known: Optional[tuple[list[float], int]]) -> None:
        if known is None:
            return
        flags, step = known
        if flags[NONFINITE]:
            raise NonFiniteLoss(self._message(trainer, step))
        self._stop = self._stop or int(flags[INTERRUPT])

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Every checkpoint passes here before it is written (on every rank): not one from non-finite weights."""
        self._act_on(trainer, self._flags.wait())  # a GPU's flags still on their way
        if self._training and self._loss is not None:
            bad = torch.logical_not(torch.isfinite(self._loss)).any().float().reshape(1)
            _max_over_ranks(trainer, bad)
            if bad.item():
                raise NonFiniteLoss(self._message(trainer, trainer.global_step))
        self._good = (None, trainer.global_step)  # its path: ModelCheckpoint's, read when it is needed

    def _message(self, trainer: L.Trainer, step: int) -> str:
        path, at = self._good
        cb = trainer.checkpoint_callback
        path = path or getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
        good = f"the last good checkpoint is {path} (step {at}), left as it was" if path and at is not None \
            else "no checkpoint was written before it"
        hints = ["lower optim.lr"]
        if str(trainer.precision).startswith("16"):
            hints.append(f"trainer.precision=bf16-mixed instead of {trainer.precision}")
        clip = trainer.gradient_clip_val
        hints.append(f"keep trainer.gradient_clip_val (now {clip})" if clip else "set trainer.gradient_clip_val=1.0")
        return f"train/loss is NaN or Inf at step {step}: training stopped; {good} | try: {', '.join(hints)}"
