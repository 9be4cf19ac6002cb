"""The optimizers' typed settings and their construction: AdamW as gptlab uses it (`optim=adamw`, a `_partial_` of
torch.optim.AdamW that the LightningModule calls with the parameter groups), and Muon for the hidden matrices with
AdamW for the rest (`optim=muon`, MuonWithAdamW; Muon's step batched by shape, StackedMuon)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from gptlab.devices import has_fast_bf16
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
    # Newton-Schulz in "bfloat16" (torch.optim.Muon's own) or "float32" (where bf16 matmuls are slow: CPUs
    # without bf16 units, ~12x); auto: bfloat16 where they are fast (the probe behind trainer.precision=auto)
    newton_schulz: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.newton_schulz not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"optim.newton_schulz must be auto, bfloat16 or float32, got {self.newton_schulz!r}")
        if not self.muon_lr > 0:
            raise ValueError(f"optim.muon_lr must be > 0, got {self.muon_lr}")
        if not 0.0 <= self.momentum < 1.0 or self.ns_steps < 1:
            raise ValueError(f"optim.momentum must be in [0, 1) and optim.ns_steps >= 1, got {self.momentum}, "
                             f"{self.ns_steps}")
        if self.muon_weight_decay < 0:
            raise ValueError(f"optim.muon_weight_decay must be >= 0, got {self.muon_weight_decay}")


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer for Lightning and the lr schedule: Muon (StackedMuon, torch.optim.Muon's update) over the
    groups marked `muon`, AdamW over the others. Its param_groups are the two optimizers' own (the schedule scales
    both); its state_dict holds both, so a resumed run continues exactly."""

    HIDDEN_MATRICES = True  # build_optimizer hands it param_groups(model, hidden=True)

    def __init__(self, params: list[dict], lr: float, betas: list[float], eps: float, weight_decay: float,
                 muon_lr: float, momentum: float, nesterov: bool, ns_steps: int, muon_weight_decay: float,
                 newton_schulz: str = "auto", fused: Optional[bool] = None, foreach: Optional[bool] = None) -> None:
        hidden = [g for g in params if g.get("muon")]
        if newton_schulz == "auto":
            device = next((p.device for g in hidden for p in g["params"]), torch.device("cpu"))
            newton_schulz = "bfloat16" if has_fast_bf16(device) else "float32"
        self.muon = StackedMuon(hidden, ns_dtype=getattr(torch, newton_schulz), lr=muon_lr, momentum=momentum,
                                nesterov=nesterov, ns_steps=ns_steps, weight_decay=muon_weight_decay)
        self.adamw = torch.optim.AdamW([g for g in params if not g.get("muon")], lr=lr, betas=tuple(betas), eps=eps,
                                       weight_decay=weight_decay, fused=fused, foreach=foreach)
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], {})  # the same group dicts

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = closure_loss(closure)
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]  # loading made new group dicts


class StackedMuon(torch.optim.Muon):
    """torch.optim.Muon (its groups, hyperparameters, state and update) with the step taken once per shape instead
    of once per matrix: the updates of one shape (a block's c_fc in every layer, say) orthogonalised together as
    one batch of matrix products. On a GPU that is fewer kernel launches; on a 2-core CPU, where torch's loop over
    small matrices made a training step cost a fifth more than with AdamW, it takes 30% off Muon's step at the CPU
    recipe's size (scripts/bench_muon.py). Newton-Schulz runs in `ns_dtype`: bfloat16 as torch's own, or float32
    where bf16 matmuls are slow (a CPU without bf16 units: 10-100x). The same state dict as torch's Muon, so a checkpoint moves between them."""

    # matrices per stack: as many as fit in 2^19 elements (1 MB in bf16, about a CPU core's L2 cache): the small
    # ones batched, where each call's overhead outweighs its arithmetic; large ones one at a time, as torch does
    STACK_ELEMENTS = 1 << 19

    def __init__(self, params: Any, ns_dtype: torch.dtype = torch.bfloat16, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = closure_loss(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            by_shape: dict[torch.Size, list[tuple[torch.nn.Parameter, torch.Tensor]]] = {}
            for p in params:
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = update if update.size(0) <= update.size(1) else update.T  # iterate on the wide side
                by_shape.setdefault(update.shape, []).append((p, update))
            for shape, same in by_shape.items():
                per_stack = max(1, self.STACK_ELEMENTS // shape.numel())
                for pairs in (same[i:i + per_stack] for i in range(0, len(same), per_stack)):
                    stacked = pairs[0][1].new_empty((len(pairs), *shape), dtype=self.ns_dtype)  # rows <= cols
                    for slot, (_, update) in zip(stacked, pairs):
                        slot.copy_(update)  # transposed and converted in one pass
                    ortho = orthogonalize(stacked, group["ns_coefficients"], group["ns_steps"], group["eps"])
                    for (p, _), o in zip(pairs, ortho):
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                        p.add_(o if o.shape == p.shape else o.T,
                               alpha=-group["lr"] * muon_lr_scale(p.shape, group["adjust_lr_fn"]))
        return loss


def closure_loss(closure: Optional[Callable[[], Any]]) -> Any:
    """What an optimizer's step returns: the loss its closure re-computes (with gradients), if it has one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def orthogonalize(x: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration on a batch of wide matrices (matrices, rows, cols), rows <= cols,
    in x's dtype: each -> roughly the nearest semi-orthogonal matrix (its singular values pushed towards 1)."""
    a, b, c = coefficients
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)  # each one's spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT  # (matrices, rows, rows): the smaller Gram matrix
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


def muon_lr_scale(shape: torch.Size, adjust_lr_fn: Optional[str]) -> float:
    """torch.optim.Muon's lr adjustment for a (rows, cols) matrix."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))  # "original", the default


def orthogonalises(factory: Callable[..., torch.optim.Optimizer]) -> bool:
    """Whether the optimizer a factory (a `_partial_`) makes updates the hidden matrices whole (Muon)."""
    return getattr(getattr(factory, "func", factory), "HIDDEN_MATRICES", False)


def optimizer_groups(factory: Callable[..., torch.optim.Optimizer], model: GPT) -> list[dict]:
    """The parameter groups the optimizer wants: Muon's hidden matrices apart where it asks for them."""
    return param_groups(model, hidden=orthogonalises(factory))


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
