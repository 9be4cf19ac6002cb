"""The optimizers' typed settings and their construction: AdamW as gptlab uses it (`optim=adamw`, a `_partial_` of
torch.optim.AdamW that the LightningModule calls with the parameter groups), and Muon for the hidden matrices with
AdamW for the rest (`optim=muon`, MuonWithAdamW)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from gptlab.model import GPT, param_groups


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


@dataclass
class MuonConfig(AdamWConfig):
    """Muon (torch.optim.Muon) for the blocks' matrices; AdamW, with optim=adamw's keys, for embeddings, head,
    biases and norm gains. A recipe's lr, betas and weight decay, written for AdamW, carry over to that part."""

    muon_lr: float = 0.02  # for the hidden matrices, whose updates are orthogonalised: each of unit size
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5  # Newton-Schulz iterations that orthogonalise each update
    muon_weight_decay: float = 0.0  # on the hidden matrices

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.muon_lr > 0:
            raise ValueError(f"optim.muon_lr must be > 0, got {self.muon_lr}")
        if not 0.0 <= self.momentum < 1.0 or self.ns_steps < 1:
            raise ValueError(f"optim.momentum must be in [0, 1) and optim.ns_steps >= 1, got {self.momentum}, "
                             f"{self.ns_steps}")
        if self.muon_weight_decay < 0:
            raise ValueError(f"optim.muon_weight_decay must be >= 0, got {self.muon_weight_decay}")


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer for Lightning and the lr schedule: torch.optim.Muon over the groups marked `muon`, AdamW over
    the others. Its param_groups are the two optimizers' own (the schedule scales both); its state_dict holds
    both, so a resumed run continues exactly."""

    HIDDEN_MATRICES = True  # build_optimizer hands it param_groups(model, hidden=True)

    def __init__(self, params: list[dict], lr: float, betas: list[float], eps: float, weight_decay: float,
                 muon_lr: float, momentum: float, nesterov: bool, ns_steps: int, muon_weight_decay: float,
                 fused: Optional[bool] = None, foreach: Optional[bool] = None) -> None:
        self.muon = torch.optim.Muon([g for g in params if g.get("muon")], lr=muon_lr, momentum=momentum,
                                     nesterov=nesterov, ns_steps=ns_steps, weight_decay=muon_weight_decay)
        self.adamw = torch.optim.AdamW([g for g in params if not g.get("muon")], lr=lr, betas=tuple(betas), eps=eps,
                                       weight_decay=weight_decay, fused=fused, foreach=foreach)
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], {})  # the same group dicts

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]  # loading made new group dicts


def optimizer_groups(factory: Callable[..., torch.optim.Optimizer], model: GPT) -> list[dict]:
    """The parameter groups the optimizer wants: Muon's hidden matrices apart where it asks for them."""
    return param_groups(model, hidden=getattr(getattr(factory, "func", factory), "HIDDEN_MATRICES", False))


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
