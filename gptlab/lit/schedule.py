"""Learning-rate schedule: linear warmup, then cosine decay to a floor; a multiplier of the base lr."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass
class WarmupCosine:
    """Linear warmup, then cosine decay to a floor.

    lr(step) = base_lr * self(step). The config (`scheduler=warmup_cosine`) is a `_partial_` of this class;
    the LightningModule calls it and wraps the result in a LambdaLR (a plain object, not a lambda, so it
    is checkpointed with the run)."""

    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the lr ends at min_lr_ratio * optim.lr
    total_steps: Optional[int] = None  # steps of the cosine; None: trainer.max_steps (or a time budget's)

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"scheduler.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"scheduler.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"scheduler.total_steps must be >= 1 (or null), got {self.total_steps}")

    def __call__(self, step: int) -> float:
        total = self.total_steps if self.total_steps is not None else 1 << 40  # until a time budget aims it
        warmup = min(self.warmup_steps, total)
        if step < warmup:
            return (step + 1) / warmup
        if step >= total:
            return self.min_lr_ratio
        progress = (step - warmup) / max(1, total - warmup)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine
