"""The GPT: token + learned position embeddings, a stack of transformer blocks, a language-model head.

GPT-2 by default; the levers of later models are options of GPTConfig, each one setting: rotary positions
(`pos=rope`), RMSNorm (`norm_type=rmsnorm`), QK-norm, ReLU² and SwiGLU MLPs, grouped-query attention
(`n_kv_head`), logit soft-capping and zero-initialised output projections.

One file, top to bottom, in the order the data flows. Parameter names follow GPT-2's checkpoint
(`transformer.wte`, `h.0.attn.c_attn`, `ln_f`, ...) so pretrained weights map one to one.
Shapes in comments: B batch, T time (tokens), C channels (n_embd), nh heads, hs head size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gptlab.model.cache import KVCache
from gptlab.model.linear import Linear
from gptlab.model.loss import ChunkedHeadLoss

ACTIVATIONS = ("gelu", "relu", "relu2", "swiglu")
NORMS = ("pre", "post")
NORM_TYPES = ("layernorm", "rmsnorm")
ATTENTIONS = ("sdpa", "explicit")
POSITIONS = ("learned", "rope")


class ConfigError(ValueError):
    """A model configuration that cannot work; the message says which field and how to fix it."""


@dataclass
class GPTConfig:
    """The GPT's shape and options. The defaults are model=small: ~4.8M parameters, trains on a laptop CPU."""

    vocab_size: Optional[int] = None  # None: taken from the tokenizer when the model is built
    block_size: int = 128  # longest context the model sees (size of the position table)
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    dropout: float = 0.1
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2
    # relu2: relu(x)^2 (Primer, modded-nanogpt); swiglu: silu(gate) * up (Llama), 8/3 n_embd wide (same parameters)
    activation: str = "gelu"  # "gelu" (GPT-1/GPT-2), "relu" (the original Transformer), "relu2" or "swiglu"
    norm: str = "pre"  # "pre": LayerNorm before each sublayer (GPT-2); "post": after the residual add (GPT-1)
    tie_weights: bool = True  # lm_head shares its matrix with the token embedding, as GPT-2
    attention: str = "sdpa"  # "sdpa": fused kernels (flash on GPU); "explicit": softmax(QK^T)V written out
    pos: str = "learned"  # "learned": a table of positions (GPT-2); "rope": q and k rotated by position (RoFormer)
    rope_base: float = 10000.0  # rope: the base of the rotation frequencies
    norm_type: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm": no mean subtracted, no bias (Llama)
    qk_norm: bool = False  # RMSNorm of each head's q and k before attention (Qwen3): bounded attention logits
    n_kv_head: Optional[int] = None  # grouped-query attention: heads of keys and values, dividing n_head; None: n_head
    logit_softcap: Optional[float] = None  # logits squashed smoothly into (-cap, cap) by cap * tanh(x / cap)
    zero_init: bool = False  # output projections start at zero, so each block starts as the identity
    # training only: each block's activations are recomputed in the backward pass instead of kept (activation
    # checkpointing): the memory of one block's instead of every block's, for about a third more compute
    recompute: bool = False

    # the weights do not depend on these: a resumed run may change them (every other field is the model's shape)
    CHANGEABLE_ON_RESUME: ClassVar[tuple[str, ...]] = ("dropout", "attention", "recompute")
    # a new run from trained weights (init_from=) may also use fewer positions or more tokens: model/resize.py
    CHANGEABLE_ON_INIT: ClassVar[tuple[str, ...]] = (*CHANGEABLE_ON_RESUME, "block_size", "vocab_size")

    def __post_init__(self) -> None:
        for name in ("block_size", "n_layer", "n_head", "n_embd", "vocab_size"):  # vocab_size None: not known yet
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            n, h = self.n_embd, self.n_head
            near = min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - h), d))  # nearest divisor
            raise ConfigError(f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                              f"pick n_head from the divisors of n_embd (e.g. model.n_head={near})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ConfigError(f"model.n_kv_head={self.n_kv_head} must divide model.n_head={self.n_head}")
        if self.pos == "rope" and self.head_size % 2:
            raise ConfigError(f"model.pos=rope rotates pairs of channels: the head size {self.head_size} must be even")
        for name in ("rope_base", "logit_softcap"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be > 0, got {getattr(self, name)}")
        for name, allowed in (("activation", ACTIVATIONS), ("norm", NORMS), ("attention", ATTENTIONS),
                              ("pos", POSITIONS), ("norm_type", NORM_TYPES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"model.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_hidden(self) -> int:
        """The MLP's width: 4 C; SwiGLU has three matrices to the others' two, so 8/3 C (a multiple of 16)
        keeps its parameters at ~8 C^2."""
        return 16 * round(8 * self.n_embd / 3 / 16) if self.activation == "swiglu" else 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.RMSNorm):
    """x / rms(x) * gain, computed in float32 as LayerNorm is under autocast (and as Llama computes it): PyTorch's
    fused kernel wants the input and the gain in one dtype, and under bf16 autocast they are not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps).to(x.dtype)


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    """LayerNorm (GPT-2) or RMSNorm (a gain, no bias, no mean subtracted)."""
    if config.norm_type == "rmsnorm":
        return RMSNorm(dim, eps=1e-6)
    return nn.LayerNorm(dim, bias=config.bias)


def rotation_table(positions: int, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angle position * base^(-2i/hs) of every position and channel pair i: 2 x (positions, hs/2)."""
    half = head_size // 2
    angle = torch.arange(positions, dtype=torch.float32)[:, None] * base ** (-torch.arange(half) / half)
    return angle.cos(), angle.sin()


Rotation = tuple[torch.Tensor, torch.Tensor]  # cos and sin of the tokens' angles: (T, hs/2), or (B, 1, T, hs/2)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding: channel pairs (i, i + hs/2) of x (B, nh, T, hs) turned by their position's angles,
    so q.k depends on positions only through their difference."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t only sees positions <= t."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer  # which of the KV cache's layers is this one's
        self.n_head, self.n_kv_head, self.hs = config.n_head, config.kv_heads, config.head_size
        self.dropout = config.dropout
        self.explicit = config.attention == "explicit"
        # q, k, v in one matmul (with grouped-query attention, k and v have fewer heads than q)
        self.c_attn = Linear(config.n_embd, config.n_embd + 2 * self.n_kv_head * self.hs, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.q_norm, self.k_norm = (RMSNorm(self.hs, eps=1e-6), RMSNorm(self.hs, eps=1e-6)) if config.qk_norm \
            else (nn.Identity(), nn.Identity())
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.keep_weights = False  # GPT.attention_weights: keep the attention map in `weights`
        self.weights: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, rope: Optional[Rotation], cache: Optional[KVCache]) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split([C, self.n_kv_head * self.hs, self.n_kv_head * self.hs], dim=2)
        # (B, T, heads * hs) -> (B, heads, T, hs): each head attends independently
        q = self.q_norm(q.view(B, T, self.n_head, self.hs).transpose(1, 2))
        k = self.k_norm(k.view(B, T, self.n_kv_head, self.hs).transpose(1, 2))
        v = v.view(B, T, self.n_kv_head, self.hs).transpose(1, 2)
        if rope is not None:  # positions enter here, as rotations of q and k, not as a table
            q, k = rotate(q, *rope), rotate(k, *rope)
        mask = None  # no cache: causal attention within x
        if cache is not None:  # decoding: store the new keys and values, attend over the row's cached ones
            k, v = cache.update(self.layer, k, v)  # (B, n_kv_head, max_len, hs)
            mask = cache.mask
        if self.n_kv_head != self.n_head:  # grouped-query: each k, v head serves n_head / n_kv_head q heads
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))

        # one new token on the CPU: the plain math beats the fused kernel, which is made for many queries
        if self.explicit or self.keep_weights or (T == 1 and x.device.type == "cpu"):
            y, weights = explicit_attention(q, k, v, mask, self.attn_dropout)
            self.weights = weights if self.keep_weights else None
        else:
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                       dropout: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(hs)) V, returning the weights too (B, nh, T, S). mask (B, 1, T, S): True where query
    i may look at key j; None: causal (query i sees keys 0..i)."""
    T, S = q.size(-2), k.size(-2)
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
    att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    return dropout(att) @ v, att  # (B, nh, T, hs)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.activation, C, hidden = config.activation, config.n_embd, config.mlp_hidden
        self.c_fc = Linear(C, 2 * hidden if self.activation == "swiglu" else hidden, bias=config.bias)
        self.c_proj = Linear(hidden, C, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.activation == "gelu":  # GPT-2's tanh approximation: pretrained weights behave the same
            h = F.gelu(h, approximate="tanh")
        elif self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.relu(h).square() if self.activation == "relu2" else F.relu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """One transformer layer: attention then MLP, each wrapped in a residual connection and a LayerNorm."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: Optional[Rotation], cache: Optional[KVCache]) -> torch.Tensor:
        if self.pre_norm:  # GPT-2: x + f(LN(x)); the residual stream itself is never normalised
            x = x + self.attn(self.ln_1(x), rope, cache)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, rope, cache))  # GPT-1 / original Transformer: LN(x + f(x))
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("model.vocab_size is not set: build the model with the tokenizer's vocabulary size")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            # learned position embedding (with rotary positions there is none: attention rotates q and k)
            **({"wpe": nn.Embedding(config.block_size, config.n_embd)} if config.pos == "learned" else {}),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            # pre-norm leaves the residual stream unnormalised, so GPT-2 adds a final LayerNorm;
            # post-norm blocks already end in one (GPT-1 has no ln_f)
            ln_f=make_norm(config, config.n_embd) if config.norm == "pre" else nn.Identity(),
        ))
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        if config.pos == "rope":  # every position's rotation, computed once (not saved: it follows from the config)
            cos, sin = rotation_table(config.block_size, config.head_size, config.rope_base)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # two per layer, so the stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # zero_init: each block adds nothing at first (modded-nanogpt)
                nn.init.normal_(p, mean=0.0, std=0.0 if config.zero_init else 0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters counted once (tied matrices once); without the position table by default, as GPT-2 reports."""
        wpe = self.transformer["wpe"].weight.numel() if "wpe" in self.transformer else 0
        return sum(p.numel() for p in self.parameters()) - (wpe if non_embedding else 0)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """idx (B, T) token ids -> logits (B, T, vocab); with targets (B, T) also the mean cross-entropy.
        With a KV cache (decoding, gptlab/model/engine.py) idx's tokens follow what the cache's rows hold, and only
        the last position's logits are computed, (B, 1, vocab): decoding reads no others. A training step (train mode,
        targets, gradients) gets no logits: its loss is computed a chunk of tokens at a time (model/loss.py)."""
        x = self.features(idx, cache)
        if targets is not None and self.training and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return None, ChunkedHeadLoss.apply(x.flatten(0, 1), self.lm_head.weight, targets.reshape(-1),
                                               self.config.logit_softcap)
        logits = self.head(x if cache is None else x[:, -1:])  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def features(self, idx: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        """The last layer's output, normalised, (B, T, C): what the head reads."""
        T = idx.size(1)
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than model.block_size={self.config.block_size}")
            pos = torch.arange(T, device=idx.device)  # (T,)
        else:
            pos = cache.advance(T)  # (B, T): each row's own positions
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer["wpe"](pos)
        x = self.transformer.drop(x)
        rope = None
        if self.config.pos == "rope":  # the tokens' rotations: (T, hs/2), or (B, 1, T, hs/2), the same for every head
            cos, sin = self.cos[pos].to(x.dtype), self.sin[pos].to(x.dtype)
            rope = (cos, sin) if pos.dim() == 1 else (cos.unsqueeze(1), sin.unsqueeze(1))
        recompute = self.config.recompute and self.training and torch.is_grad_enabled() and cache is None
        for block in self.transformer.h:
            x = checkpoint(block, x, rope, cache, use_reentrant=False) if recompute else block(x, rope, cache)
        return self.transformer.ln_f(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Features (..., C) -> logits (..., vocab)."""
        logits = self.lm_head(x)
        if self.config.logit_softcap:  # large logits grow slower and slower, never past the cap (Gemma 2)
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        return logits

    def attention_weights(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention maps of every layer, each (B, nh, T, T), computed on the explicit path."""
        layers = [block.attn for block in self.transformer.h]
        for attn in layers:
            attn.keep_weights = True
        try:
            self(idx)
            return [attn.weights for attn in layers]  # type: ignore[misc]
        finally:
            for attn in layers:
                attn.keep_weights, attn.weights = False, None

    def flops_per_token(self, seq_len: Optional[int] = None) -> float:
        """Training FLOPs per token (forward + backward): 6 per weight, plus attention's QK^T and AV
        (the estimate of the PaLM paper, appendix B)."""
        c, T = self.config, seq_len or self.config.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * T


def param_groups(model: GPT, hidden: bool = False) -> list[dict]:
    """AdamW groups: matrices (Linear weights, embeddings) decay at the optimizer's weight_decay; biases, norm
    gains and a table marked `no_decay` (lora.train_token_rows) do not decay. hidden=True: the blocks' matrices
    in a group of their own first, marked `muon` (Muon orthogonalises the updates of hidden matrices; embeddings
    and the head stay with AdamW)."""
    in_blocks = {id(p) for p in model.transformer.h.parameters()} if hidden else set()
    matrices, decay, no_decay = [], [], []
    for p in model.parameters():  # .parameters() yields a tied matrix once
        if p.requires_grad:
            (no_decay if p.dim() < 2 or getattr(p, "no_decay", False) else matrices if id(p) in in_blocks
             else decay).append(p)
    # names label the groups in logs (lr/decay)
    groups = [{"params": decay, "name": "decay"}, {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [{"params": matrices, "name": "hidden", "muon": True}, *groups] if hidden else groups
