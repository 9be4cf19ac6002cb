"""Callbacks: text samples, attention maps and a harness task's score in TensorBoard, the final validation, a
time-budgeted lr schedule, throughput, the HPARAMS view, and a progress bar for log files."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from gptlab import runlog
from gptlab.devices import peak_flops
from gptlab.errors import GptlabError
from gptlab.lit.safety import save_last
from gptlab.lit.internals import end_validation_here
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
        self.seconds_per_token: Optional[float] = None  # as the last sample took

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (budget := TimeBudget.of(trainer)) is not None and not budget.affords_sample():
            return
        began = time.monotonic()
        (text,) = complete(pl_module.model, pl_module.tokenizer, self.prompt, self.sampling, seed=self.seed)
        self.seconds_per_token = (time.monotonic() - began) / max(self.sampling.max_new_tokens, 1)  # for TimeBudget
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


@dataclass(frozen=True)
class EndWork:
    """What follows a run's last step, in the units the step pace turns into seconds."""

    val_tokens: int  # read by one validation
    batch_tokens: int  # of one training step
    params: int  # saved twice (best.ckpt, last.ckpt) with AdamW's two moments
    text_tokens: int  # sampled after each validation (TextSamples)
    end_tokens: int  # sampled at the end of the run (sample_tokens)
    cpu: bool


class TimeBudget(Callback):
    """`trainer.max_time` as a promise about the wall clock: the job (start-up and compiling included, counted
    from `started`) ends, final validation, sample and exit included, within the budget; how: docs/ARCHITECTURE.md
    (step 5). Each start of a run (a resume too) has its own budget; under DDP the ranks agree on when to stop.

    Training stops when one more step would eat into the reserve: the estimated end (`end_s`), at most
    RESERVE_SHARE of the budget (`reserve_s`). The estimate follows the pace: the step time is that of about the
    last PACE_S seconds, and a validation or a sample once timed counts as timed, scaled by how the step pace has
    changed since. A final validation that would not fit in what is left stops early (`cut`)."""

    # forward-only work per token, as a fraction of a training step's (forward + backward + update, ~3x):
    # taken high, so that a first estimate errs on the side of stopping early
    FORWARD_SHARE = 0.5
    # the most of a budget kept for the end. On a busy machine the end estimated from a slow pace could claim
    # nearly all of a short budget (2 steps trained of 40 s); capped, a short run trains for most of its time, and
    # a final validation longer than the rest is cut short (its val/loss over the batches it had time for)
    RESERVE_SHARE = 0.25
    # from the job's last line to the process's exit (result.json, the loggers' flush, the interpreter's shutdown
    # freeing torch): measured 1.4 to 2.0 s on a busy 2-core CPU
    EXIT_S = 2.0
    PACE_S = 10.0  # the step pace is that of about the last 10 s: it follows a machine getting busier or freer

    def __init__(self, max_time: Optional[str], started: Optional[float] = None, end_tokens: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s = parse_duration(max_time, "trainer.max_time") if max_time else None
        self.clock = clock
        self.started = clock() if started is None else started
        self.end_tokens = end_tokens  # tokens the end of the run generates (samples: after the validation, at the end)
        self.step_s: Optional[float] = None  # seconds per training step, of about the last PACE_S seconds
        self._last: Optional[tuple[float, int]] = None  # (clock, step) at the end of the last step timed
        self._round: Optional[tuple[float, float]] = None  # a validation round as timed, and the step pace then
        self._decode: Optional[tuple[float, float]] = None  # seconds per sampled token as timed, the step pace then
        self._val_start: Optional[float] = None
        self._work: Optional[EndWork] = None
        self.cut: Optional[tuple[int, int]] = None  # (batches done, of) where the final validation was cut short
        if self.budget_s is not None and (beat := runlog.heartbeat()) is not None:
            beat.left = self.left  # the heartbeat's lines say the time left

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
        return None if self.deadline is None else self.deadline - self.clock()

    # the estimates: plain arithmetic on the clock readings given, so that they are tested without training

    def paced(self, now: float, step: int) -> None:
        """A step ended at `now`: the pace, an average over about the last PACE_S seconds (the first step, which
        pays one-off costs such as allocation and compiling, is not timed)."""
        if self._last is not None and step > self._last[1]:
            spent = now - self._last[0]
            took = spent / (step - self._last[1])
            weight = 1.0 - math.exp(-spent / self.PACE_S)  # a step of 1 s moves it by a tenth, one of 10 s by 2/3
            self.step_s = took if self.step_s is None else self.step_s + weight * (took - self.step_s)
        self._last = (now, step)

    def validation_began(self, now: float) -> None:
        self._val_start = now
        self._last = None  # validation time is not a step's

    def timed_round(self, seconds: float) -> None:
        """A validation round (its batches, samples and checkpoints) took `seconds` at the step pace of now."""
        self._round = (seconds, self.step_s or 0.0)

    def timed_decode(self, seconds_per_token: float) -> None:
        self._decode = (seconds_per_token, self.step_s or 0.0)

    def _now_paced(self, timed: tuple[float, float]) -> float:
        """A time measured at one step pace, at the pace of now (a machine twice as busy takes twice as long)."""
        seconds, pace = timed
        return seconds * self.step_s / pace if self.step_s and pace else seconds

    def _decode_s(self, work: EndWork) -> float:
        if self._decode is not None:
            return self._now_paced(self._decode)
        # a token generated alone costs ~20x its share of a training step, and a millisecond at least on a CPU
        return max(20 * (self.step_s or 0.0) / max(work.batch_tokens, 1), 1e-3 if work.cpu else 0.0)

    def after_validation_s(self, work: EndWork, sample: bool = True) -> float:
        """What follows the final validation's batches: its sample (TextSamples; unless sample=False), the
        checkpoints, the end sample and the exit."""
        save_s = 2 * 12 * work.params / 200e6  # the best and the last checkpoint, fp32 weights + 2 moments at 200 MB/s
        tokens = (work.text_tokens if sample else 0) + work.end_tokens
        return tokens * self._decode_s(work) + save_s + self.EXIT_S

    def affords_sample(self) -> bool:
        """Whether what is left of the budget affords a validation's sample and what follows it: TextSamples
        writes none where it does not (the end sample, printed, matters more than TensorBoard's)."""
        left = self.left()
        return left is None or self._work is None or left >= self.after_validation_s(self._work)

    def end_s(self, work: EndWork) -> float:
        """What follows the last step, each part as last timed (at the pace of now) or estimated from the pace."""
        if self._round is not None:
            return self._now_paced(self._round) + work.end_tokens * self._decode_s(work) + self.EXIT_S
        per_token = (self.step_s or 0.0) / max(work.batch_tokens, 1)
        return work.val_tokens * per_token * self.FORWARD_SHARE + self.after_validation_s(work)

    def reserve_s(self, work: EndWork) -> float:
        """The seconds kept for the end: its estimate, at most RESERVE_SHARE of the budget."""
        return min(self.end_s(work), self.RESERVE_SHARE * (self.budget_s or 0.0))

    def stops(self, now: float, work: EndWork) -> bool:
        """Whether training stops at `now`: one more step would eat into the reserve."""
        return self.step_s is not None and self.deadline - now - self.reserve_s(work) < self.step_s  # type: ignore

    def cuts(self, now: float, batches_done: int, work: EndWork) -> bool:
        """Whether a validation stops at `now`, after `batches_done` batches: one more would not leave the time
        for what must follow it (its sample is left out where the time is short: `affords_sample`)."""
        per_batch = (now - (self._val_start if self._val_start is not None else now)) / max(batches_done, 1)
        return self.deadline - now - self.after_validation_s(work, sample=False) < per_batch  # type: ignore[operator]

    # the hooks

    def _end_work(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> EndWork:
        if self._work is None:  # what the end costs in tokens and bytes does not change in a run
            samples = [c for c in trainer.callbacks if isinstance(c, TextSamples)]  # type: ignore[attr-defined]
            text = sum(c.sampling.max_new_tokens for c in samples)
            self._work = EndWork(val_tokens=_val_tokens(trainer, pl_module),
                                 batch_tokens=pl_module.batch_tokens(batch)[0],
                                 params=sum(p.numel() for p in pl_module.parameters()),
                                 text_tokens=text, end_tokens=max(self.end_tokens - text, 0),
                                 cpu=pl_module.device.type == "cpu")
        return self._work

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._val_start is not None:  # training goes on after a validation: the round is over
            self.timed_round(self.clock() - self._val_start)
            self._val_start = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.budget_s is None:
            return
        now, step = self.clock(), trainer.global_step
        self.paced(now, step)
        work = self._end_work(trainer, pl_module, batch)
        if self.step_s is None:
            return
        free = self.deadline - now - self.reserve_s(work)  # type: ignore[operator]
        schedule = getattr(pl_module, "schedule", None)
        if trainer.max_steps <= 0 and schedule is not None:
            every = trainer.val_check_interval if isinstance(trainer.val_check_interval, int) else None
            val_share = self._now_paced(self._round) / every if every and self._round else 0.0  # per step
            schedule.total_steps = max(step + 1, int(step + free / (self.step_s + val_share)))
        stop = trainer.strategy.reduce_boolean_decision(self.stops(now, work), all=False)
        if stop and not trainer.should_stop:
            trainer.should_stop = True
            if schedule is not None and trainer.max_steps <= 0:
                schedule.total_steps = step  # what is left of the lr's way down is not walked

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validation_began(self.clock())

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.budget_s is None or trainer.sanity_checking or self._work is None:
            return
        done, of = batch_idx + 1, sum(trainer.num_val_batches)
        cut = done < of and self.cuts(self.clock(), done, self._work)
        if trainer.strategy.reduce_boolean_decision(cut, all=False):
            self.cut, trainer.should_stop = (done, of), True
            end_validation_here()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        samples = [c.seconds_per_token for c in trainer.callbacks if isinstance(c, TextSamples)]  # type: ignore
        if samples and samples[0] is not None:
            self.timed_decode(samples[0])


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


_duration = runlog.duration


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


class _SaysPhases(Callback):
    """Says what is under way to the job's heartbeat (gptlab.runlog), which fills any silence of every_s seconds
    with it: the data and the model before the first step, compiling, a long step, the final validation, the end."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        runlog.say("building the model")  # the data was prepared just before (Lightning's prepare_data, setup)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        super().on_sanity_check_start(trainer, pl_module)
        runlog.say("trying a validation batch")

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        compiling = getattr(pl_module, "compile", False)
        runlog.say("compiling the model and taking the first step" if compiling else "taking the first step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        runlog.say(f"step {trainer.global_step + 1:,} under way")

    def on_validation_start(self, trainer, pl_module) -> None:
        super().on_validation_start(trainer, pl_module)
        if not trainer.sanity_checking:
            runlog.say("the final validation" if trainer.should_stop else "validating")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if not trainer.sanity_checking:
            final = "the final validation" if trainer.should_stop else "validating"
            runlog.say(f"{final}: batch {batch_idx + 1:,}/{sum(trainer.num_val_batches):,} done")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        if not trainer.sanity_checking:
            runlog.say("the validation's sample, attention maps and checkpoints")

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        runlog.say("saving the checkpoints" if trainer.should_stop else f"step {trainer.global_step + 1:,} under way")

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        runlog.say("saving the checkpoints")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        runlog.say("the end of the run: its sample and summary")


class LineProgressBar(_SaysPhases, ProgressBar):
    """Progress as plain lines, for a log file (a redrawn bar is unreadable there): a line at least every
    `every_s` seconds (and every `every_n_steps` steps, if set) with the step out of the total, the training
    loss, tokens/s and the time left; validation batches likewise. The job's heartbeat (gptlab.runlog) fills the
    silences no hook can (start-up, compiling, a long step) with what is under way."""

    def __init__(self, every_s: float = 10.0, every_n_steps: Optional[int] = None) -> None:
        super().__init__()
        if every_s <= 0:
            raise ValueError(f"callbacks.progress_bar.every_s must be > 0, got {every_s}")
        self.every_s, self.every_n_steps = every_s, every_n_steps
        self._enabled, self._estimated, self._pace = True, False, _Pace()
        self._last_line = time.monotonic()

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

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._pace = _Pace(TimeBudget.of(trainer))

    def _metrics(self, trainer, pl_module, prefix: Union[str, tuple[str, ...]]) -> str:
        return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in self.get_metrics(trainer, pl_module).items() if k.startswith(prefix))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        self._pace.update(pl_module.batch_tokens(batch)[0] * trainer.world_size, step)
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

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        total = sum(trainer.num_val_batches) if not trainer.sanity_checking else None
        of = f"/{total:,}" if isinstance(total, int) else ""
        if self.is_enabled and time.monotonic() - self._last_line >= self.every_s:
            self._print(f"validation  batch {batch_idx + 1:,}{of}")

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._pace.skip()
        if self.is_enabled and not trainer.sanity_checking:
            budget = TimeBudget.of(trainer)
            cut = budget.cut if budget is not None else None
            over = f"  (over {cut[0]:,} of {cut[1]:,} batches: the time budget)" if cut else ""
            self._print(f"step {trainer.global_step:,} validation  {self._metrics(trainer, pl_module, 'val')}{over}")


class StepsBar(_SaysPhases, TQDMProgressBar):
    """Lightning's redrawn bar, counting optimizer steps out of trainer.max_steps (the training stream is
    endless, so Lightning alone shows no total and no time left), with tokens/s. While it is drawn, the job's
    heartbeat draws it again instead of printing a line (which would break it); before and after, it prints."""

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._batches = 0
        if (beat := runlog.heartbeat()) is not None:
            beat.redraw = self._redraw

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if (beat := runlog.heartbeat()) is not None:
            beat.redraw = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if (beat := runlog.heartbeat()) is not None:  # training may have ended in an exception, without on_train_end
            beat.redraw = None

    def _redraw(self) -> None:
        """The bar under way drawn again, by the heartbeat's thread after every_s without a redraw: its count and
        clock move on even where refresh_rate steps take long (a slow machine, a long first step)."""
        for name in ("val_progress_bar", "train_progress_bar"):
            try:
                bar = getattr(self, name)
            except TypeError:  # (Lightning's word for "not made yet")
                continue
            if not bar.disable:  # a closed bar is disabled
                if name == "train_progress_bar":
                    bar.n = self._batches
                bar.refresh()
                return

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
        self._batches = batch_idx + 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def progress_bar(mode: str, every_s: float, every_n_steps: Optional[int]) -> ProgressBar:
    """`tqdm`: a redrawn bar; `lines`: LineProgressBar; `auto`: the bar on a terminal, lines otherwise. every_s
    is the job heartbeat's too (gptlab.runlog): the longest silence, whatever the mode."""
    if mode not in ("auto", "tqdm", "lines"):
        raise ValueError(f"callbacks.progress_bar.mode={mode!r} is not one of: auto, tqdm, lines")
    if every_s <= 0:
        raise ValueError(f"callbacks.progress_bar.every_s must be > 0, got {every_s}")
    if (beat := runlog.heartbeat()) is not None:
        beat.every_s = every_s
    if mode == "tqdm" or (mode == "auto" and sys.stdout.isatty()):
        return StepsBar(refresh_rate=10)  # each redraw reads the loss: a host-device sync on a GPU
    return LineProgressBar(every_s, every_n_steps)
