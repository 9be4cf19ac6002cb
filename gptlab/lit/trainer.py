"""The Trainer's typed settings: the `lightning.Trainer` arguments gptlab uses, with gptlab's defaults
(`trainer=...`). Each field is passed to the Trainer under its own name, except two that gptlab resolves
first: `precision=auto` (a measured choice, `devices.auto_precision`) and `max_time` (kept on the wall
clock by the `TimeBudget` callback, not by Lightning's Timer)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from gptlab.devices import auto_precision, lightning_device


def parse_duration(text: str, key: str) -> float:
    """"DD:HH:MM:SS" -> seconds (Lightning's format for trainer.max_time); anything else is a ValueError naming
    the key and the format."""
    parts = str(text).split(":")
    try:
        d, h, m, s = (int(p) for p in parts)
    except ValueError:
        d = h = m = s = -1
    total = ((d * 24 + h) * 60 + m) * 60 + s
    if len(parts) != 4 or min(d, h, m, s) < 0 or total <= 0:
        raise ValueError(f"{key}={text} is not a duration DD:HH:MM:SS above zero (e.g. 00:00:02:00 for two minutes)")
    return float(total)


def format_duration(seconds: float) -> str:
    """Seconds -> "DD:HH:MM:SS" (whole seconds, rounded up)."""
    total = max(0, math.ceil(seconds))
    m, s = divmod(total, 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d:02d}:{h:02d}:{m:02d}:{s:02d}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true", "transformer-engine")


@dataclass
class TrainerConfig:
    """lightning.Trainer's arguments, with gptlab's defaults."""

    accelerator: str = "auto"  # cpu, gpu, mps, auto
    devices: Any = "auto"  # a count, a list of ids, or auto
    num_nodes: int = 1
    strategy: Any = "auto"  # ddp, fsdp, ...
    precision: Any = "auto"  # auto: bf16-mixed where a probe finds bf16 matmuls faster than fp32 here, else 32-true
    # (bf16-mixed, 32-true, 16-mixed for GPUs before Ampere, bf16-true: bf16 weights too)
    max_steps: int = 5000  # -1: no step budget (then set max_time)
    max_time: Optional[str] = None  # "DD:HH:MM:SS": the whole job, start-up, final validation and sample included
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
        if self.max_time is not None:
            parse_duration(self.max_time, "trainer.max_time")
        if self.max_steps == -1 and self.max_time is None and not self.fast_dev_run:
            raise ValueError("trainer.max_steps=-1 runs for ever: set trainer.max_time=DD:HH:MM:SS or a step budget")
        for name, low, note in (("accumulate_grad_batches", 1, ""), ("log_every_n_steps", 1, ""), ("num_nodes", 1, ""),
                                ("gradient_clip_val", 0, " (or null)"), ("max_epochs", -1, " (-1: no limit)"),
                                ("check_val_every_n_epoch", 1, " (or null)"), ("num_sanity_val_steps", -1, "")):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"trainer.{name} must be >= {low}{note}, got {value}")
        if _number(self.val_check_interval) and self.val_check_interval <= 0:
            raise ValueError(f"trainer.val_check_interval must be > 0, got {self.val_check_interval}")
        for name in ("limit_val_batches", "limit_train_batches", "overfit_batches"):
            value = getattr(self, name)
            if _number(value) and value < 0:
                raise ValueError(f"trainer.{name} must be >= 0 (a count, or a fraction up to 1.0), got {value}")


def lightning_settings(spec: TrainerConfig) -> tuple[dict, str]:
    """lightning.Trainer's arguments for a trainer spec, and why its precision is what it is: precision=auto is
    decided for the device it trains on; max_time is left to the TimeBudget callback."""
    precision, why = str(spec.precision), ""
    if precision == "auto":
        precision, why = auto_precision(lightning_device(spec.accelerator))
    return {**asdict(spec), "precision": precision, "max_time": None}, why
