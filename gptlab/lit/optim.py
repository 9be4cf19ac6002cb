"""The optimizer's typed settings: AdamW as gptlab uses it (`optim=adamw`, a `_partial_` of torch.optim.AdamW
that the LightningModule calls with the parameter groups)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class AdamWConfig:
    """AdamW, with weight decay on matrices only."""

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # beta2 0.99: small batches, noisy gradients
    eps: float = 1e-8
    weight_decay: float = 0.1  # applied to matrices only; biases and LayerNorm weights get none
    fused: Optional[bool] = None  # one kernel for the whole update (CUDA)
    foreach: Optional[bool] = None  # batched tensor ops instead of a Python loop over parameters

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], params: list[dict], device: torch.device,
                    scaled: bool) -> torch.optim.Optimizer:
    """Call the optimizer factory (a `_partial_`) with the parameter groups. Left unset (fused=None,
    foreach=None), AdamW is fused on CUDA: one kernel for the whole update instead of one per tensor. Not
    under a gradient scaler (16-mixed), which a fused optimizer would unscale inside its step, where
    gradient clipping cannot come in between."""
    keywords = getattr(factory, "keywords", {})
    if device.type == "cuda" and not scaled and keywords.get("fused", False) is None \
            and not keywords.get("foreach"):
        return factory(params, fused=True)
    return factory(params)

