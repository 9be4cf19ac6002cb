"""Callbacks: text samples, attention maps and a harness task's score in TensorBoard, the final validation, a
time-budgeted lr schedule, throughput, the HPARAMS view, and a progress bar for log files."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from gptlab.devices import peak_flops
from gptlab.errors import GptlabError
from gptlab.lit.safety import save_last
from gptlab.lit.trainer import parse_duration
from gptlab.model import SamplingConfig, complete
from gptlab.model.lora import trainable
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


class HarnessTask(Callback):
    """After each validation, a task of the LM Evaluation Harness (`pip install -e ".[eval]"`), a local multiple-
    choice one say (include_path: its folder), scored on the model as it trains: `harness/<task>/acc` (and its
    other metrics) in TensorBoard beside the loss curves. Off unless `task` is set."""

    def __init__(self, task: Optional[str], include_path: Optional[str], limit: Optional[float],
                 batch_size: int = 16) -> None:
        self.scorer = None
        if task:
            try:
                from gptlab.harness import TaskScorer
            except ImportError as e:
                raise GptlabError(f"callbacks.harness_task needs the LM Evaluation Harness ({e.name} is not "
                                  'installed): pip install -e ".[eval]"') from None
            self.scorer = TaskScorer(task, include_path, limit, batch_size)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.scorer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = self.scorer(pl_module.model, pl_module.tokenizer)
        for logger in trainer.loggers:
            logger.log_metrics({f"harness/{self.scorer.task}/{k}": v for k, v in metrics.items()},
                               step=trainer.global_step)


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
        if trainer.sanity_checking or not trainer.is_global_zero or (tb := _tensorboard(trainer)) is None:
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
    """Make the last step validate (and so checkpoint), whatever val_check_interval is, and leave last.ckpt at it.

    Lightning validates when a callback asks the loop to stop; this asks at max_steps. (TimeBudget stops
    the same way, so a timed run also ends with a validation.) Lightning (2.6) writes last.ckpt only where it writes
    best.ckpt: a last validation that did not improve would leave last.ckpt, what a resume starts from, behind.
    """

    def __init__(self) -> None:
        self._saved_at: Optional[int] = None  # the step of the latest checkpoint written

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._saved_at = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        if self._saved_at is not None and self._saved_at != trainer.global_step:
            save_last(trainer)


class TimeBudget(Callback):
    """`trainer.max_time` as a promise about the wall clock: the job (start-up and compiling included, counted
    from `started`) ends, final validation and sample included, within the budget; how: docs/ARCHITECTURE.md
    (step 5). Each start of a run (a resume too) has its own budget; under DDP the ranks agree on when to stop."""

    # forward-only work per token, as a fraction of a training step's (forward + backward + update, ~3x):
    # taken high, so that a first estimate errs on the side of stopping early
    FORWARD_SHARE = 0.5

    def __init__(self, max_time: Optional[str], started: Optional[float] = None, end_tokens: int = 0) -> None:
        self.budget_s = parse_duration(max_time, "trainer.max_time") if max_time else None
        self.started = time.monotonic() if started is None else started
        self.end_tokens = end_tokens  # tokens the end of the run generates (samples)
        self._step_s: Optional[float] = None  # seconds per training step, a moving average
        self._last: Optional[tuple[float, int]] = None  # (clock, step) at the end of the last step timed
        self._val_s: Optional[float] = None  # seconds of the last whole validation
        self._val_start = 0.0
        self._val_tokens: Optional[int] = None
        self._save_s: Optional[float] = None

    @property
    def deadline(self) -> Optional[float]:
        """The monotonic time by which the job must have ended; None without a budget."""
        return None if self.budget_s is None else self.started + self.budget_s

    @staticmethod
    def of(trainer: L.Trainer) -> Optional[TimeBudget]:
        """The trainer's time budget; None where it has none."""
        found = [c for c in trainer.callbacks if isinstance(c, TimeBudget) and c.budget_s is not None]  # type: ignore
        return found[0] if found else None

    def left(self) -> Optional[float]:
        """Seconds of the budget left; None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _final_work_s(self, trainer: L.Trainer, pl_module: L.LightningModule, batch_tokens: int) -> float:
        """What follows the last step: one validation and the samples, each as last timed or estimated."""
        step_s = self._step_s or 0.0
        val_s = self._val_s
        if val_s is None:  # no validation yet: its tokens at the training pace, forward only
            if self._val_tokens is None:
                self._val_tokens = _val_tokens(trainer, pl_module)
            val_s = self._val_tokens * step_s / max(batch_tokens, 1) * self.FORWARD_SHARE
        # a token generated alone costs ~20x its share of a training step, and a millisecond at least on a CPU
        decode_s = max(20 * step_s / max(batch_tokens, 1), 1e-3 if pl_module.device.type == "cpu" else 0.0)
        if self._save_s is None:  # the best and the last checkpoint: weights, AdamW's 2 moments in fp32, at 200 MB/s
            self._save_s = 2 * 12 * sum(p.numel() for p in pl_module.parameters()) / 200e6
        return val_s + self.end_tokens * decode_s + self._save_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.budget_s is None:
            return
        now, step = time.monotonic(), trainer.global_step
        if self._last is not None and step > self._last[1]:
            took = (now - self._last[0]) / (step - self._last[1])
            self._step_s = took if self._step_s is None else 0.9 * self._step_s + 0.1 * took
        self._last = (now, step)  # the first step (allocation, compiling) is not timed
        if self._step_s is None:
            return
        tokens = pl_module.batch_tokens(batch)[0]
        free = self.deadline - now - self._final_work_s(trainer, pl_module, tokens)  # type: ignore[operator]
        schedule = getattr(pl_module, "schedule", None)
        if trainer.max_steps <= 0 and schedule is not None:
            every = trainer.val_check_interval if isinstance(trainer.val_check_interval, int) else None
            val_share = (self._val_s or 0.0) / every if every else 0.0  # validations on the way, per step
            schedule.total_steps = max(step + 1, int(step + free / (self._step_s + val_share)))
        stop = trainer.strategy.reduce_boolean_decision(free < self._step_s, all=False)
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            if schedule is not None and trainer.max_steps <= 0:
                schedule.total_steps = step  # what is left of the lr's way down is not walked

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._val_s = time.monotonic() - self._val_start
        self._last = None  # validation time is not a step's


def _val_tokens(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    """The tokens one validation reads: its batches (limit_val_batches of the val loader) x batch x context."""
    dm = getattr(trainer, "datamodule", None)
    if dm is None:
        return 0
    loader = dm.val_dataloader()
    n, limit = len(loader), trainer.limit_val_batches
    n = min(n, int(limit)) if isinstance(limit, int) else int(n * (limit if limit is not None else 1.0))
    return n * (loader.batch_size or 1) * pl_module.config.block_size


class Throughput(Callback):
    """Logs training tokens per second (`perf/tokens_per_s`, over each logging interval; `perf/run_tokens_per_s`,
    over the whole run so far) and model FLOP utilisation (`perf/mfu`: the model's training FLOPs per second
    over the device's dense peak). Evaluation time is not counted. Host-side counters only: nothing here
    waits for the GPU."""

    def __init__(self) -> None:
        self.t0: Optional[float] = None
        self.tokens = 0
        self.run_tokens, self.run_seconds = 0, 0.0
        self.peak: Optional[float] = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        low = str(trainer.precision).startswith(("bf16", "16"))
        self.peak = peak_flops(pl_module.device, torch.bfloat16 if low else torch.float32)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tokens, width = pl_module.batch_tokens(batch)
        self.tokens += tokens * trainer.world_size
        if (trainer.global_step % trainer.log_every_n_steps == 0) and trainer.global_step > 0 and self.t0:
            seconds = time.perf_counter() - self.t0
            rate = self.tokens / seconds
            self.run_tokens, self.run_seconds = self.run_tokens + self.tokens, self.run_seconds + seconds
            pl_module.log("perf/tokens_per_s", rate, rank_zero_only=True)
            pl_module.log("perf/run_tokens_per_s", self.run_tokens / self.run_seconds, rank_zero_only=True)
            if self.peak:
                flops = pl_module.model.flops_per_token(width) * rate
                pl_module.log("perf/mfu", flops / (self.peak * trainer.world_size), rank_zero_only=True)
            self.t0, self.tokens = time.perf_counter(), 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.t0, self.tokens = None, 0  # evaluation time is not training time


class RunSummary(Callback):
    """Says what is being trained in a few lines, once the model exists (it is built in setup, from the
    data's tokenizer). The full config is in the run dir's .hydra/config.yaml."""

    def __init__(self, max_time: Optional[str] = None, precision_why: str = "", compiled: bool = False,
                 compile_why: str = "") -> None:
        self.max_time, self.precision_why = max_time, precision_why
        self.compiled, self.compile_why = compiled, compile_why

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m, c, tok = pl_module.model, pl_module.config, pl_module.tokenizer
        lines = [f"model    {m.num_params() / 1e6:.2f}M parameters: {c.n_layer} layers x {c.n_head} heads x "
                 f"{c.n_embd}, context {c.block_size}, {tok.kind} vocabulary of {c.vocab_size:,}"]
        lora = getattr(pl_module, "lora", None)
        if lora is not None:  # finetune=lora: what trains
            trains, total = trainable(m)
            lines.append(f"lora     rank {lora.rank} (alpha {lora.alpha:g}) on {', '.join(lora.targets)}: {trains:,} of "
                         f"{total:,} parameters train ({trains / total:.2%}), the rest frozen")
        describe = getattr(trainer.datamodule, "describe", None)  # type: ignore[attr-defined]
        if describe is not None:
            lines.append(f"data     {describe()}")
        device = trainer.strategy.root_device
        threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
        ranks = f", {trainer.world_size} processes" if trainer.world_size > 1 else ""
        why = f" ({self.precision_why})" if self.precision_why else ""
        compiled = ", compiled" if self.compiled else ""
        compile_why = f" (compile={'true' if self.compiled else 'false'}, {self.compile_why})" if self.compile_why else ""
        lines.append(f"device   {device}{threads}{ranks}, precision {trainer.precision}{why}{compiled}{compile_why}")
        if trainer.max_steps > 0 and self.max_time:
            lines.append(f"steps    {trainer.max_steps:,}, within {self.max_time} (DD:HH:MM:SS) for the whole run")
        elif trainer.max_steps > 0:
            lines.append(f"steps    {trainer.max_steps:,}; the time it takes is estimated after the first steps")
        else:
            lines.append(f"time     {self.max_time} (DD:HH:MM:SS) for the whole run: training stops in time for a "
                         "last validation and the sample")
        lines.append(f"run dir  {trainer.default_root_dir}")
        print("\n".join(lines), flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _Pace:
    """Tokens per second of training (validation excluded), and the time left."""

    def __init__(self, budget: Optional[TimeBudget] = None) -> None:
        self.budget = budget
        self.start = self.mark = time.perf_counter()
        self.first_step: Optional[int] = None  # the pace is timed from the end of the first step on
        self.tokens = 0

    def update(self, tokens: int, step: int) -> None:
        self.tokens += tokens
        if self.first_step is None:  # the first step pays one-off costs (allocation, compilation)
            self.first_step, self.start = step, time.perf_counter()
            self.mark, self.tokens = self.start, 0

    def rate(self) -> float:
        """Tokens/s since the last call (or the last validation)."""
        tokens_s = self.tokens / max(time.perf_counter() - self.mark, 1e-9)
        self.skip()
        return tokens_s

    def eta(self, trainer: L.Trainer, step: int) -> Optional[float]:
        """Seconds left: the time budget left, or the steps left at the pace so far (validation included)."""
        left = self.budget.left() if self.budget is not None else None
        if left is not None:
            return max(0.0, left)
        if trainer.max_steps > 0 and self.first_step is not None and step > self.first_step:
            return (trainer.max_steps - step) * (time.perf_counter() - self.start) / (step - self.first_step)
        return None

    def skip(self) -> None:
        """Validation time is not training time."""
        self.mark, self.tokens = time.perf_counter(), 0


class HparamsSummary(Callback):
    """Fills TensorBoard's HPARAMS tab: the run's flattened config against its val/loss, val/bpc and val/bpb
    curves."""

    def __init__(self, hparams: dict, metrics: tuple[str, ...] = ("val/loss", "val/bpc", "val/bpb", "val/ppl")) -> None:
        self.hparams, self.metrics = hparams, metrics

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (tb := _tensorboard(trainer)) is None:
            return
        from torch.utils.tensorboard.summary import hparams

        # declares which scalar tags are the metrics; their latest values show up in the tab,
        # so no placeholder value is logged
        exp, ssi, sei = hparams(self.hparams, {m: 0.0 for m in self.metrics})
        for summary in (exp, ssi, sei):  # into the run's own event file, not a new one as add_hparams would
            tb.experiment.file_writer.add_summary(summary)


class LineProgressBar(ProgressBar):
    """Progress as plain lines, for a log file (a redrawn bar is unreadable there): a line at least every
    `every_s` seconds (and every `every_n_steps` steps, if set) with the step out of the total, the training
    loss, tokens/s and the time left; validation batches likewise. A watcher thread fills the silences no hook
    can (start-up, compiling, a long step): after every_s seconds without a line it says what is under way."""

    def __init__(self, every_s: float = 10.0, every_n_steps: Optional[int] = None) -> None:
        super().__init__()
        if every_s <= 0:
            raise ValueError(f"callbacks.progress_bar.every_s must be > 0, got {every_s}")
        self.every_s, self.every_n_steps = every_s, every_n_steps
        self._enabled, self._estimated, self._pace = True, False, _Pace()
        self._last_line = time.monotonic()
        self._phase, self._phase_since = "starting", time.monotonic()
        self._done = threading.Event()
        self._watcher: Optional[threading.Thread] = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _print(self, line: str) -> None:
        self._last_line = time.monotonic()
        print(line, flush=True)

    def _set_phase(self, phase: str) -> None:
        self._phase, self._phase_since = phase, time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.every_s / 4)):
            now = time.monotonic()  # only a phase that has lasted: a step's own line comes from its hook
            if now - self._last_line >= self.every_s and now - self._phase_since >= self.every_s:
                self._print(f"... {self._phase} ({_duration(now - self._phase_since)})")

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self._watcher is None:
            self._done.clear()
            self._watcher = threading.Thread(target=self._watch, name="gptlab-progress", daemon=True)
            self._watcher.start()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._done.set()
        self._watcher = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._pace = _Pace(TimeBudget.of(trainer))
        compiling = getattr(pl_module, "compile", False)
        self._set_phase("compiling the model and taking the first step" if compiling else "taking the first step")

    def _metrics(self, trainer, pl_module, prefix: Union[str, tuple[str, ...]]) -> str:
        return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in self.get_metrics(trainer, pl_module).items() if k.startswith(prefix))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        self._pace.update(pl_module.batch_tokens(batch)[0] * trainer.world_size, step)
        self._set_phase(f"step {step + 1:,} under way")
        if not self.is_enabled or step == 0:
            return
        if not self._estimated and step >= 20 and trainer.max_steps > 0 and self._pace.budget is None:
            self._estimated = True  # the first steps pay one-off costs; by now the pace is fair
            eta = self._pace.eta(trainer, step)
            self._print(f"estimated: {_duration(eta or 0)} more for {trainer.max_steps - step:,} steps "
                        f"(validation included)")
        by_steps = self.every_n_steps is not None and step % self.every_n_steps == 0
        if by_steps or time.monotonic() - self._last_line >= self.every_s:
            tokens_s = self._pace.rate()
            total = f"/{trainer.max_steps:,}" if trainer.max_steps > 0 else ""
            eta = self._pace.eta(trainer, step)
            left = f"  ETA {_duration(eta)}" if eta is not None else ""
            self._print(f"step {step:,}{total}  {self._metrics(trainer, pl_module, ('train', 'rl'))}  {tokens_s:,.0f} tok/s"
                        f"{left}")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._set_phase("validating")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        total = sum(trainer.num_val_batches) if not trainer.sanity_checking else None
        of = f"/{total:,}" if isinstance(total, int) else ""
        self._set_phase(f"validating: batch {batch_idx + 1:,}{of} done")
        if self.is_enabled and time.monotonic() - self._last_line >= self.every_s:
            self._print(f"validation  batch {batch_idx + 1:,}{of}")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._pace.skip()
        self._set_phase(f"step {trainer.global_step + 1:,} under way")
        if self.is_enabled and not trainer.sanity_checking:
            self._print(f"step {trainer.global_step:,} validation  {self._metrics(trainer, pl_module, 'val')}")

    def on_train_end(self, trainer, pl_module) -> None:
        self._set_phase("saving and writing the end of the run")


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
        self._tokens_per_batch = pl_module.batch_tokens(batch)[0] * trainer.world_size
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def progress_bar(mode: str, every_s: float, every_n_steps: Optional[int]) -> ProgressBar:
    """`tqdm`: a redrawn bar; `lines`: LineProgressBar; `auto`: the bar on a terminal, lines otherwise."""
    if mode not in ("auto", "tqdm", "lines"):
        raise ValueError(f"callbacks.progress_bar.mode={mode!r} is not one of: auto, tqdm, lines")
    if mode == "tqdm" or (mode == "auto" and sys.stdout.isatty()):
        return StepsBar(refresh_rate=10)  # each redraw reads the loss: a host-device sync on a GPU
    return LineProgressBar(every_s, every_n_steps)
