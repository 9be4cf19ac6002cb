"""Callbacks: text samples in TensorBoard, the final validation, a time-budgeted lr schedule, throughput,
the HPARAMS view, and a progress bar for log files."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from gptlab.model import SamplingConfig, complete


def _tensorboard(trainer: L.Trainer) -> Optional[TensorBoardLogger]:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class TextSamples(Callback):
    """After each validation, generate a sample and write it to TensorBoard's TEXT tab."""

    def __init__(self, prompt: str, max_new_tokens: int, seed: int) -> None:
        self.prompt, self.seed = prompt, seed
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens)
        self.last: Optional[str] = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        (text,) = complete(pl_module.model, pl_module.tokenizer, self.prompt, self.sampling, seed=self.seed)
        self.last = self.prompt + text
        tb = _tensorboard(trainer)
        if tb is not None:
            # TensorBoard renders markdown: indent by four spaces to keep line breaks as written
            body = "\n".join("    " + line for line in self.last.splitlines())
            tb.experiment.add_text("samples", body, trainer.global_step)


class FinalValidation(Callback):
    """Make the last step validate (and so checkpoint), whatever val_check_interval is.

    Lightning validates when a callback asks the loop to stop; this asks at max_steps. (The max_time
    Timer stops the same way, so a timed run also ends with a validation.)
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class TimeBudgetSchedule(Callback):
    """With a time budget and no step budget (`trainer.max_steps=-1 trainer.max_time=...`), re-aim the
    cosine after every step at the step where time will run out, so the lr still anneals to its floor:
    total = now + remaining time x measured steps per second (validation included)."""

    def __init__(self, max_time: Optional[str]) -> None:
        self.budget_s = _seconds(max_time) if max_time else None
        self._start: Optional[tuple[float, int]] = None  # (clock, step) where step timing began

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._start = time.monotonic(), None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        schedule = getattr(pl_module, "schedule", None)
        if self.budget_s is None or trainer.max_steps > 0 or schedule is None:
            return
        now, step = time.monotonic(), trainer.global_step
        if self._start is None or step <= self._start[1]:
            self._start = (now, step)  # start timing after the first step (it pays one-off costs)
            return
        t0, s0 = self._start
        remaining = max(0.0, self.budget_s - (now - self._t0))
        rate = (step - s0) / max(now - t0, 1e-9)
        schedule.total_steps = max(step + 1, int(step + remaining * rate))


def _seconds(max_time: str) -> float:
    """"DD:HH:MM:SS" -> seconds, as Lightning reads trainer.max_time."""
    d, h, m, s = (int(x) for x in max_time.split(":"))
    return ((d * 24 + h) * 60 + m) * 60 + s


class Throughput(Callback):
    """Logs training tokens per second (`perf/tokens_per_s`), averaged over each logging interval."""

    def __init__(self) -> None:
        self.t0: Optional[float] = None
        self.tokens = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += batch[0].numel() * trainer.world_size
        if (trainer.global_step % trainer.log_every_n_steps == 0) and trainer.global_step > 0 and self.t0:
            dt = time.perf_counter() - self.t0
            pl_module.log("perf/tokens_per_s", self.tokens / dt, rank_zero_only=True)
            self.t0, self.tokens = time.perf_counter(), 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.t0, self.tokens = None, 0  # evaluation time is not training time


class RunSummary(Callback):
    """Says what is being trained, once the model exists (it is built in setup, from the data's tokenizer)."""

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m, c = pl_module.model, pl_module.config
        print(f"model: {m.num_params() / 1e6:.2f}M parameters (+{m.transformer.wpe.weight.numel() / 1e6:.2f}M "
              f"position table), vocab {c.vocab_size} ({pl_module.tokenizer.kind}), context {c.block_size}",
              flush=True)


class HparamsSummary(Callback):
    """Fills TensorBoard's HPARAMS tab: the run's flattened config against its val/loss and val/bpc curves."""

    def __init__(self, hparams: dict, metrics: tuple[str, ...] = ("val/loss", "val/bpc", "val/ppl")) -> None:
        self.hparams, self.metrics = hparams, metrics

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tb = _tensorboard(trainer)
        if tb is None:
            return
        from torch.utils.tensorboard.summary import hparams

        # declares which scalar tags are the metrics; their latest values show up in the tab,
        # so no placeholder value is logged
        exp, ssi, sei = hparams(self.hparams, {m: 0.0 for m in self.metrics})
        writer = tb.experiment._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)


class LineProgressBar(ProgressBar):
    """Progress as plain lines, one every `every_n_steps`: readable in a log file, unlike a redrawn bar."""

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._t0 = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def _metrics(self, trainer, pl_module, prefix: str) -> str:
        m = self.get_metrics(trainer, pl_module)
        return "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items() if k.startswith(prefix)
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.is_enabled and step % self.every_n_steps == 0 and step > 0:
            total = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
            elapsed = time.perf_counter() - self._t0
            print(f"step {step}{total}  {self._metrics(trainer, pl_module, 'train')}  {elapsed:.0f}s", flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.is_enabled and not trainer.sanity_checking:
            print(f"step {trainer.global_step} validation  {self._metrics(trainer, pl_module, 'val')}", flush=True)


def progress_bar(mode: str, every_n_steps: int) -> ProgressBar:
    """`tqdm`: Lightning's redrawn bar; `lines`: LineProgressBar; `auto`: tqdm on a terminal, lines otherwise."""
    if mode not in ("auto", "tqdm", "lines"):
        raise ValueError(f"callbacks.progress_bar.mode={mode!r} is not one of: auto, tqdm, lines")
    if mode == "tqdm" or (mode == "auto" and sys.stdout.isatty()):
        return TQDMProgressBar()
    return LineProgressBar(every_n_steps)
