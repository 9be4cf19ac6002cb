"""The LightningModule: the GPT plus its loss, metrics, optimizer and lr schedule."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torchmetrics import MeanMetric

from gptlab.lit.schedule import WarmupCosine
from gptlab.model import GPT, GPTConfig, param_groups
from gptlab.tokenizers import tokenizer_from_dict

CHECKPOINT_FORMAT = 1


class GPTLitModule(L.LightningModule):
    """Wraps a GPT for training.

    Its hyperparameters (saved in every checkpoint) are plain values: the model config, the tokenizer and
    where the data came from, so a checkpoint alone rebuilds the model and tokenizer
    (`gptlab.checkpoint.load`) and finds its validation split again (`gptlab.eval`). The optimizer arrives as a factory
    (Hydra's `_partial_: true`), taking the parameter groups.
    """

    def __init__(
        self,
        model: dict,
        tokenizer: dict,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[dict] = None,
        val_tokens_per_char: float = 1.0,
        data: Optional[dict] = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.config = GPTConfig(**model)
        self.model = GPT(self.config)
        self.tokenizer = tokenizer_from_dict(tokenizer)
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler or {})
        self.val_tokens_per_char = val_tokens_per_char
        self.val_loss = MeanMetric()
        # torch.compile's wrapper is kept in a list, not as an attribute, so it is not registered as a
        # submodule: the state_dict keeps the plain `model.*` keys and a compiled run's checkpoint loads anywhere
        self._compiled: list[Callable] = []
        self.best_val, self.best_step = math.inf, None  # lowest val/loss of this run, and its step
        self.schedule: Optional[WarmupCosine] = None
        self._by_time: Optional[tuple[float, int]] = None  # (clock, step) where step timing began

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        if self.hparams.get("compile") and not self._compiled:
            self._compiled.append(torch.compile(self.model))
        return (self._compiled[0] if self._compiled else self.model)(idx, targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self(x, y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self(x, y)
        self.val_loss.update(loss, weight=x.size(0))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # mean over every window, synced across DDP ranks
        self.val_loss.reset()
        # loss is in nats per token; bits per character makes char and BPE runs comparable
        bpc = loss / math.log(2) * self.val_tokens_per_char
        if not self.trainer.sanity_checking and float(loss) < self.best_val:
            self.best_val, self.best_step = float(loss), self.global_step
        # (already equal on every rank: sync_dist only tells Lightning so)
        self.log_dict({"val/loss": loss, "val/ppl": torch.exp(loss), "val/bpc": bpc}, prog_bar=True, sync_dist=True)
        # x-axis: the number of optimizer steps the evaluated weights have had (Lightning's default is one less)
        self.log("step", float(self.global_step), sync_dist=True)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("GPTLitModule was built without an optimizer factory; it can only run inference")
        optimizer = self.optimizer_factory(param_groups(self.model))
        cfg = self.scheduler_cfg
        total = cfg.get("total_steps") or self.trainer.max_steps
        if total is None or total <= 0:  # no step budget: the schedule follows trainer.max_time instead
            if self._timer() is None:
                raise ValueError("the lr schedule needs trainer.max_steps, scheduler.total_steps or trainer.max_time")
            total = 1 << 40  # until the step rate is known (on_train_batch_end)
            self._by_time = (0.0, -1)
        self.schedule = WarmupCosine(int(cfg.get("warmup_steps", 0)), int(total), float(cfg.get("min_lr_ratio", 0.1)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def _timer(self) -> Optional[Timer]:
        return next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """With a time budget, re-aim the cosine at the step where time will run out, so the lr still
        anneals to its floor: total = now + remaining time x measured steps per second (validation included)."""
        if self._by_time is None or self.schedule is None:
            return
        now, step = time.monotonic(), self.trainer.global_step
        t0, s0 = self._by_time
        if s0 < 0 or step <= s0:
            self._by_time = (now, step)  # start timing after the first step (it pays one-off costs)
            return
        remaining = self._timer().time_remaining() or 0.0  # type: ignore[union-attr]
        rate = (step - s0) / max(now - t0, 1e-9)
        self.schedule.total_steps = max(step + 1, int(step + remaining * rate))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gptlab"] = {"format": CHECKPOINT_FORMAT}
