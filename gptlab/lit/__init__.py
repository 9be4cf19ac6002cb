"""Lightning glue: the LightningModule around the GPT, its lr schedule, optimizers, trainer settings and callbacks.

Names are imported on first use: the typed settings here (trainer.py, optim.py, schedule.py, grpo.py) are read by
every command's config, and only training and evaluation need Lightning itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["GPTLitModule"]

if TYPE_CHECKING:
    from gptlab.lit.module import GPTLitModule


def __getattr__(name: str) -> Any:
    if name != "GPTLitModule":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from gptlab.lit.module import GPTLitModule

    return GPTLitModule
