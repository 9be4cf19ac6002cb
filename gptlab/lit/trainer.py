"""The Trainer's typed settings: the `lightning.Trainer` arguments gptlab uses, with gptlab's defaults
(`trainer=...`). Each field is passed to the Trainer under its own name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true", "transformer-engine")


@dataclass
class TrainerConfig:
    """lightning.Trainer's arguments, with gptlab's defaults."""

    accelerator: str = "auto"  # cpu, gpu, mps, auto
    devices: Any = "auto"  # a count, a list of ids, or auto
    num_nodes: int = 1
    strategy: Any = "auto"  # ddp, fsdp, ...
    precision: Any = "32-true"  # bf16-mixed: faster on recent CPUs and GPUs; 16-mixed: older GPUs
    max_steps: int = 5000  # -1: no step budget (then set max_time)
    max_time: Optional[str] = None  # "DD:HH:MM:SS"; stops early, after a last validation
    max_epochs: int = -1  # training batches are an endless stream; steps (or time) end a run
    val_check_interval: Any = 250  # validate, sample text and checkpoint every N optimizer steps
    check_val_every_n_epoch: Optional[int] = None  # count val_check_interval across the whole run
    limit_val_batches: Any = 20  # 20 batches of fixed windows (model=small: 20 x 64 x 128 = 164k tokens)
    num_sanity_val_steps: int = 1
    gradient_clip_val: Optional[float] = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    deterministic: Any = False
    benchmark: Optional[bool] = None
    enable_model_summary: bool = False  # gptlab prints its own parameter count
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    limit_train_batches: Any = None
    profiler: Any = None  # "simple", "advanced", or a profiler config with _target_

    def __post_init__(self) -> None:
        if str(self.precision) not in PRECISIONS:
            raise ValueError(f"trainer.precision={self.precision} is not one of {', '.join(PRECISIONS)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"trainer.max_steps must be >= 1, or -1 with trainer.max_time, got {self.max_steps}")
        if self.max_steps == -1 and self.max_time is None and not self.fast_dev_run:
            raise ValueError("trainer.max_steps=-1 runs for ever: set trainer.max_time=DD:HH:MM:SS or a step budget")
        for name in ("accumulate_grad_batches", "log_every_n_steps", "num_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.gradient_clip_val is not None and self.gradient_clip_val < 0:
            raise ValueError(f"trainer.gradient_clip_val must be >= 0 (or null), got {self.gradient_clip_val}")
        if self.max_epochs < -1:
            raise ValueError(f"trainer.max_epochs must be >= -1 (-1: no limit), got {self.max_epochs}")
        if self.check_val_every_n_epoch is not None and self.check_val_every_n_epoch < 1:
            raise ValueError(f"trainer.check_val_every_n_epoch must be >= 1 (or null), got {self.check_val_every_n_epoch}")
        if _number(self.val_check_interval) and self.val_check_interval <= 0:
            raise ValueError(f"trainer.val_check_interval must be > 0, got {self.val_check_interval}")
        for name in ("limit_val_batches", "limit_train_batches", "overfit_batches"):
            value = getattr(self, name)
            if _number(value) and value < 0:
                raise ValueError(f"trainer.{name} must be >= 0 (a count, or a fraction up to 1.0), got {value}")
        if self.num_sanity_val_steps < -1:
            raise ValueError(f"trainer.num_sanity_val_steps must be >= -1, got {self.num_sanity_val_steps}")
