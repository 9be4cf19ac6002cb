"""Low-rank adapters (LoRA, Hu et al. 2021): fine-tune a big model by training a small change beside its weights.

A target matrix W (out x in) stays frozen; beside it a product B A of rank r (B: out x r, A: r x in) learns the
change, so a target layer computes

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T

A starts random and B at zero, so the adapted model starts exactly as the base. Only A and B train: a rank-8
adapter on every block's four matrices is under 1% of GPT-2's parameters, and the optimizer keeps state for
those alone. Merging folds the change into the weights (W + (alpha / r) B A): the model is a plain GPT again, with
the same outputs. Targets use GPT-2's module names, which PEFT's adapters for GPT-2 use too.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.model.gpt import GPT, ConfigError
from gptlab.model.linear import Linear

# every block's matrices: attention's q, k, v (one matrix) and its output projection, the MLP's two (SwiGLU's
# first holds its gate and up projections)
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@dataclass
class LoRAConfig:
    """Low-rank adapters (LoRA) on the targets of every block: only they train, the base stays frozen (lora.*)."""

    rank: int = 8  # r: the rank of each change B A
    alpha: float = 16.0  # the change is scaled by alpha / rank, so a new rank needs no new learning rate
    dropout: float = 0.0  # on the adapters' input only
    targets: list[str] = field(default_factory=lambda: list(TARGETS))  # which of each block's matrices adapt
    merge: bool = False  # at the end of the run, also write checkpoints/merged.ckpt: the adapters folded in
    # which rows of the token table train beside the adapters (a tied head shares them): "new", those the base
    # lacks (chat markers, new characters), or "all", the whole table, what a small char model needs to learn
    # tasks far from its text (docs/finetuning.md: rank 64 reached 91.3% of the task set with it, 58.6% without)
    tokens: str = "new"

    def __post_init__(self) -> None:
        if self.tokens not in ("new", "all"):
            raise ConfigError(f"lora.tokens must be new (the rows of the tokens the base lacks train) or all (the "
                              f"whole token table trains), got {self.tokens!r}")
        if int(self.rank) < 1:
            raise ConfigError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        self.targets = list(self.targets)
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"lora.targets: {', '.join(map(repr, unknown)) or 'none given'} "
                              f"{'is not a target' if len(unknown) == 1 else 'are not targets'}: "
                              f"use any of {', '.join(TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return asdict(self)


class LoRALinear(Linear):
    """A Linear whose weight and bias stay as they are (the base's own tensors, frozen) and which learns the
    low-rank change `lora_B @ lora_A` beside them."""

    def __init__(self, base: nn.Linear, config: LoRAConfig) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # the base's parameters, not copies
        for p in (self.weight, self.bias):
            if p is not None:
                p.requires_grad_(False)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(config.rank, base.in_features, **kw))  # (r, in)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as PEFT's
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, config.rank, **kw))  # (out, r): starts at zero
        self.scale = config.scale
        self.lora_dropout = nn.Dropout(config.dropout)
        self.enabled = True  # False: the base alone (adapters_off)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return super().forward(x)
        change = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        return super().forward(x).add_(change, alpha=self.scale)  # in place: one output-sized tensor fewer

    def delta(self) -> torch.Tensor:
        """The change to the weight, (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scale


def adapters(model: GPT) -> Iterator[tuple[str, LoRALinear]]:
    """(module name, module) of every adapted matrix."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear))


@contextlib.contextmanager
def adapters_off(model: GPT) -> Iterator[GPT]:
    """The model as its base alone while inside: every adapter's change left out (the start of a LoRA run, which
    RL measures its KL against without keeping a copy)."""
    held = [m for _, m in adapters(model)]
    for m in held:
        m.enabled = False
    try:
        yield model
    finally:
        for m in held:
            m.enabled = True


def add_lora(model: GPT, config: LoRAConfig) -> GPT:
    """Adapters on the targets of every block, and every other parameter frozen. In place; returns the model."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.transformer.h:
        for target in config.targets:
            owner, name = target.split(".")
            parent = getattr(block, owner)
            setattr(parent, name, LoRALinear(getattr(parent, name), config))
    return model


@torch.no_grad()
def merge_lora(model: GPT) -> GPT:
    """The adapters folded into their weights (W + scale * B A), each back to a plain Linear, every parameter
    trainable again: a plain GPT with the same outputs. In place; returns the model."""
    for name, module in list(adapters(model)):
        owner, _, attr = name.rpartition(".")
        plain = Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight = nn.Parameter(module.weight + module.delta().to(module.weight.dtype))
        plain.bias = module.bias
        setattr(model.get_submodule(owner), attr, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def train_token_rows(model: GPT, first: int) -> None:
    """The token table's rows from `first` on train beside the adapters: tokens the base never saw (chat markers, a
    char model's new characters) would otherwise all stay the one average row they start as, and the model could
    not tell them apart; first=0 (lora.tokens=all): every row. The rows before `first` stay as they are: their
    gradient is zeroed and no weight decay reaches the table (`param_groups` reads `no_decay`). A tied head shares
    the table, and so the rows."""
    table = model.transformer.wte.weight
    keep = torch.zeros(table.shape[0], 1, dtype=table.dtype, device=table.device)
    keep[first:] = 1
    table.requires_grad_(True)
    table.register_hook(lambda grad: grad * keep)
    table.no_decay, table.trained_from = True, first  # type: ignore[attr-defined]


def adapter_state(model: GPT) -> dict[str, torch.Tensor]:
    """The adapters' tensors, by their state_dict names (`transformer.h.0.attn.c_attn.lora_A`, ...)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


def base_checksum(model: GPT) -> str:
    """A fingerprint of the weights the adapters sit on (every tensor but the adapters'), so that adapters are
    never put on a base other than the one they were trained on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if ".lora_" not in name:
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def trainable(model: nn.Module) -> tuple[int, int]:
    """(parameters that train, all parameters), tied matrices counted once; of a table whose new rows train
    (train_token_rows), those rows."""
    params = list(model.parameters())
    trains = sum((p.shape[0] - getattr(p, "trained_from", 0)) * p[0].numel() if p.requires_grad else 0 for p in params)
    return trains, sum(p.numel() for p in params)
