"""Callbacks: text samples and attention maps in TensorBoard, the final validation, a time-budgeted lr
schedule, throughput, the HPARAMS view, and a progress bar for log files."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from gptlab.devices import peak_flops
from gptlab.model import SamplingConfig, complete
from gptlab.viz import attention_maps, layer_images, token_labels


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


class AttentionMaps(Callback):
    """After each validation, the attention weights of every layer for one fixed prompt, as images in
    TensorBoard's IMAGES tab: `attention/layer_N`, the layer's heads side by side (row t: where token t looks).

    The prompt is the start of the validation split, at most `max_tokens` tokens (and at most block_size), so
    every image of a run shows the same text and the maps can be compared step by step; it is written once to
    the TEXT tab as `attention/prompt`. One forward pass of one short sequence: far cheaper than the validation.
    """

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 1:
            raise ValueError(f"callbacks.attention_maps.max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self.ids: Optional[list[int]] = None

    def _prompt(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[int]:
        dm = trainer.datamodule  # type: ignore[attr-defined]
        val = getattr(getattr(dm, "files", None), "val", None)  # a TextDataModule's split
        if val is None and getattr(dm, "val_rows", None) is not None:  # a ChatDataModule's first conversation
            val = dm.val_rows.ids[0]
        if val is None:
            return []
        n = min(self.max_tokens, pl_module.model.config.block_size, len(val))
        return [int(i) for i in val[:n]]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        tb = _tensorboard(trainer)
        if tb is None:
            return
        if self.ids is None:
            self.ids = self._prompt(trainer, pl_module)
            if self.ids:  # what the rows and columns are, once
                labels = " ".join(token_labels(pl_module.tokenizer, self.ids))
                tb.experiment.add_text("attention/prompt", "    " + labels, trainer.global_step)
        if not self.ids:
            return
        maps = attention_maps(pl_module.model, self.ids)  # eval mode, no grad; the model's mode is restored
        for layer, image in enumerate(layer_images(maps)):
            tb.experiment.add_image(f"attention/layer_{layer}", image, trainer.global_step, dataformats="HWC")


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
    """Logs training tokens per second (`perf/tokens_per_s`) and model FLOP utilisation (`perf/mfu`: the
    model's training FLOPs per second over the device's dense peak), averaged over each logging interval.
    Host-side counters only: nothing here waits for the GPU."""

    def __init__(self) -> None:
        self.t0: Optional[float] = None
        self.tokens = 0
        self.peak: Optional[float] = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        low = str(trainer.precision).startswith(("bf16", "16"))
        self.peak = peak_flops(pl_module.device, torch.bfloat16 if low else torch.float32)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += batch[0].numel() * trainer.world_size
        if (trainer.global_step % trainer.log_every_n_steps == 0) and trainer.global_step > 0 and self.t0:
            dt = time.perf_counter() - self.t0
            rate = self.tokens / dt
            pl_module.log("perf/tokens_per_s", rate, rank_zero_only=True)
            if self.peak:
                flops = pl_module.model.flops_per_token(batch[0].size(1)) * rate
                pl_module.log("perf/mfu", flops / (self.peak * trainer.world_size), rank_zero_only=True)
            self.t0, self.tokens = time.perf_counter(), 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.t0, self.tokens = None, 0  # evaluation time is not training time


class RunSummary(Callback):
    """Says what is being trained in a few lines, once the model exists (it is built in setup, from the
    data's tokenizer). The full config is in the run dir's .hydra/config.yaml."""

    def __init__(self, max_time: Optional[str] = None) -> None:
        self.max_time = max_time

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m, c, tok = pl_module.model, pl_module.config, pl_module.tokenizer
        lines = [f"model    {m.num_params() / 1e6:.2f}M parameters: {c.n_layer} layers x {c.n_head} heads x "
                 f"{c.n_embd}, context {c.block_size}, {tok.kind} vocabulary of {c.vocab_size:,}"]
        describe = getattr(trainer.datamodule, "describe", None)  # type: ignore[attr-defined]
        if describe is not None:
            lines.append(f"data     {describe()}")
        device = trainer.strategy.root_device
        threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
        ranks = f", {trainer.world_size} processes" if trainer.world_size > 1 else ""
        lines.append(f"device   {device}{threads}{ranks}, precision {trainer.precision}")
        if trainer.max_steps > 0:
            lines.append(f"steps    {trainer.max_steps:,}; the time it takes is estimated after the first steps")
        else:
            lines.append(f"time     {self.max_time} (DD:HH:MM:SS), then a last validation")
        lines.append(f"run dir  {trainer.default_root_dir}")
        print("\n".join(lines), flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _Pace:
    """Steps and tokens per second of training (validation excluded), and the time left."""

    def __init__(self, budget_s: Optional[float] = None) -> None:
        self.budget_s = budget_s
        self.begun = self.start = self.mark = time.perf_counter()
        self.first_step: Optional[int] = None  # the pace is timed from the end of the first step on
        self.steps_at_mark, self.tokens = 0, 0

    def update(self, tokens: int, step: int) -> None:
        self.tokens += tokens
        if self.first_step is None:  # the first step pays one-off costs (allocation, compilation)
            self.first_step, self.start = step, time.perf_counter()
            self.mark, self.steps_at_mark, self.tokens = self.start, step, 0

    def rate(self, step: int) -> tuple[float, float]:
        """(tokens/s, steps/s) since the last call (or the last validation)."""
        now = time.perf_counter()
        dt = max(now - self.mark, 1e-9)
        out = self.tokens / dt, (step - self.steps_at_mark) / dt
        self.mark, self.steps_at_mark, self.tokens = now, step, 0
        return out

    def eta(self, trainer: L.Trainer, step: int) -> Optional[float]:
        """Seconds left: the steps left at the pace so far (validation included), or the time budget left."""
        now = time.perf_counter()
        if trainer.max_steps > 0 and self.first_step is not None and step > self.first_step:
            return (trainer.max_steps - step) * (now - self.start) / (step - self.first_step)
        return None if self.budget_s is None else max(0.0, self.budget_s - (now - self.begun))

    def skip(self, step: int) -> None:
        """Validation time is not training time."""
        self.mark, self.steps_at_mark, self.tokens = time.perf_counter(), step, 0


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
    """Progress as plain lines, one every `every_n_steps`: readable in a log file, unlike a redrawn bar.
    Each line has the step out of the total, the training loss, tokens/s and the time left."""

    def __init__(self, every_n_steps: int, max_time: Optional[str] = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.budget_s = _seconds(max_time) if max_time else None
        self._enabled = True
        self._pace = _Pace(self.budget_s)
        self._estimated = False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def on_train_start(self, trainer, pl_module) -> None:
        self._pace = _Pace(self.budget_s)

    def _metrics(self, trainer, pl_module, prefix: str) -> str:
        m = self.get_metrics(trainer, pl_module)
        return "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items() if k.startswith(prefix)
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        self._pace.update(batch[0].numel() * trainer.world_size, step)
        if not self.is_enabled or step == 0:
            return
        if not self._estimated and step >= min(20, self.every_n_steps) and trainer.max_steps > 0:
            self._estimated = True  # the first steps pay one-off costs; by now the pace is fair
            eta = self._pace.eta(trainer, step)
            print(f"estimated: {_duration(eta or 0)} more for {trainer.max_steps - step:,} steps "
                  f"(validation included)", flush=True)
        if step % self.every_n_steps == 0:
            tokens_s, _ = self._pace.rate(step)
            total = f"/{trainer.max_steps:,}" if trainer.max_steps > 0 else ""
            eta = self._pace.eta(trainer, step)
            left = f"  ETA {_duration(eta)}" if eta is not None else ""
            print(f"step {step:,}{total}  {self._metrics(trainer, pl_module, 'train')}  {tokens_s:,.0f} tok/s"
                  f"{left}", flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._pace.skip(trainer.global_step)
        if self.is_enabled and not trainer.sanity_checking:
            print(f"step {trainer.global_step:,} validation  {self._metrics(trainer, pl_module, 'val')}", flush=True)


class StepsBar(TQDMProgressBar):
    """Lightning's redrawn bar, counting optimizer steps out of trainer.max_steps (the training stream is
    endless, so Lightning alone shows no total and no time left), with tokens/s."""

    @property
    def total_train_batches(self) -> Union[int, float]:
        t = self.trainer
        return t.max_steps * t.accumulate_grad_batches if t.max_steps > 0 else float("inf")

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}
        bar = self.train_progress_bar
        rate = bar.format_dict.get("rate") if bar is not None else None
        if rate and getattr(self, "_tokens_per_batch", 0):
            metrics["tok/s"] = f"{rate * self._tokens_per_batch:,.0f}"
        return metrics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens_per_batch = batch[0].numel() * trainer.world_size
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def progress_bar(mode: str, every_n_steps: int, max_time: Optional[str] = None) -> ProgressBar:
    """`tqdm`: a redrawn bar; `lines`: LineProgressBar; `auto`: the bar on a terminal, lines otherwise."""
    if mode not in ("auto", "tqdm", "lines"):
        raise ValueError(f"callbacks.progress_bar.mode={mode!r} is not one of: auto, tqdm, lines")
    if mode == "tqdm" or (mode == "auto" and sys.stdout.isatty()):
        return StepsBar(refresh_rate=10)  # each redraw reads the loss: a host-device sync on a GPU
    return LineProgressBar(every_n_steps, max_time)
