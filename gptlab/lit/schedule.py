"""Learning-rate schedule: linear warmup, then cosine decay to a floor; a multiplier of the base lr."""

from __future__ import annotations

import math


class WarmupCosine:
    """lr(step) = base_lr * factor(step). A plain object (not a lambda) so LambdaLR can checkpoint it."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> None:
        if total_steps < 1:
            raise ValueError(f"the lr schedule needs total_steps >= 1, got {total_steps}: set trainer.max_steps")
        self.warmup_steps = max(0, min(warmup_steps, total_steps))
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr_ratio
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine
