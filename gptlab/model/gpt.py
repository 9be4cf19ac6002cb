"""The GPT: token + learned position embeddings, a stack of transformer blocks, a language-model head.

One file, top to bottom, in the order the data flows. Parameter names follow GPT-2's checkpoint
(`transformer.wte`, `h.0.attn.c_attn`, `ln_f`, ...) so pretrained weights map one to one.
Shapes in comments: B batch, T time (tokens), C channels (n_embd), nh heads, hs head size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.model.sampling import generate

ACTIVATIONS = ("gelu", "relu")
NORMS = ("pre", "post")
ATTENTIONS = ("sdpa", "explicit")


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
    activation: str = "gelu"  # "gelu" (GPT-1/GPT-2) or "relu" (the original Transformer)
    norm: str = "pre"  # "pre": LayerNorm before each sublayer (GPT-2); "post": after the residual add (GPT-1)
    tie_weights: bool = True  # lm_head shares its matrix with the token embedding, as GPT-2
    attention: str = "sdpa"  # "sdpa": fused kernels (flash on GPU); "explicit": softmax(QK^T)V written out

    # the weights do not depend on these: a resumed run may change them (every other field is the model's shape)
    CHANGEABLE_ON_RESUME: ClassVar[tuple[str, ...]] = ("dropout", "attention")
    # a new run from trained weights (init_from=) may also use fewer positions or more tokens: see adapt()
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
        for name, allowed in (("activation", ACTIVATIONS), ("norm", NORMS), ("attention", ATTENTIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"model.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t only sees positions <= t."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.explicit = config.attention == "explicit"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kv_cache: Optional[KVCache] = None  # set by GPT.setup_caches, for generation

    def forward(self, x: torch.Tensor, input_pos: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                need_weights: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): each head attends independently
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if input_pos is not None:  # generation: store the new keys and values, attend over the whole cache
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, nh, L, hs)

        weights = None
        dropout_p = self.dropout if self.training else 0.0
        # one new token on the CPU: the plain math beats the fused kernel, which is made for many queries
        # (3-7x in bf16)
        if self.explicit or need_weights or (T == 1 and x.device.type == "cpu"):
            y, weights = explicit_attention(q, k, v, mask, self.attn_dropout)
        else:  # no mask: causal attention within x
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y)), weights


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                       dropout: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(hs)) V, returning the weights too (B, nh, T, S). mask (T, S): True where query i
    may look at key j; None: causal (query i sees keys 0..i)."""
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
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 uses the tanh approximation of GELU; keeping it makes pretrained weights behave the same
        self.act = nn.GELU(approximate="tanh") if config.activation == "gelu" else nn.ReLU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """One transformer layer: attention then MLP, each wrapped in a residual connection and a LayerNorm."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, input_pos: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                need_weights: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.pre_norm:  # GPT-2: x + f(LN(x)); the residual stream itself is never normalised
            a, w = self.attn(self.ln_1(x), input_pos, mask, need_weights)
            x = x + a
            x = x + self.mlp(self.ln_2(x))
        else:  # GPT-1 / original Transformer: LN(x + f(x))
            a, w = self.attn(x, input_pos, mask, need_weights)
            x = self.ln_1(x + a)
            x = self.ln_2(x + self.mlp(x))
        return x, w


class KVCache:
    """Keys and values of one attention layer for generation, preallocated: 2 x (B, nh, max_len, hs).

    A step writes its tokens' keys and values at their positions and attends over the whole cache, the
    positions not yet written masked out: every one-token step has the same shapes, which CUDA graphs need.
    """

    def __init__(self, batch: int, n_head: int, max_len: int, head_size: int, device, dtype) -> None:
        # zeros, not empty: a masked position weighs 0, but 0 * NaN (uninitialised memory) would still be NaN
        self.k = torch.zeros(batch, n_head, max_len, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        if self.k.is_cuda:  # a fixed address: a CUDA graph updates the cache in place instead of copying it
            torch._dynamo.mark_static_address(self.k)
            torch._dynamo.mark_static_address(self.v)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T, hs) at positions input_pos (T,); return the whole cache, 2 x (B, nh, max_len, hs)."""
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("model.vocab_size is not set: build the model with the tokenizer's vocabulary size")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embedding
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            # pre-norm leaves the residual stream unnormalised, so GPT-2 adds a final LayerNorm;
            # post-norm blocks already end in one (GPT-1 has no ln_f)
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias) if config.norm == "pre" else nn.Identity(),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # two per layer, so the stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters counted once (tied matrices once); without the position table by default, as GPT-2 reports."""
        return sum(p.numel() for p in self.parameters()) - (self.transformer.wpe.weight.numel() if non_embedding else 0)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None,
                input_pos: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """idx (B, T) token ids -> logits (B, T, vocab); with targets (B, T) also the mean cross-entropy.

        input_pos (T,), for generation: the positions of idx's tokens in the KV caches (`setup_caches`). Their
        keys and values are written there, each token attends to the cached positions up to its own, and
        only the last token's logits are computed, (B, 1, vocab): generation reads no others.
        """
        T = idx.size(1)
        if input_pos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than model.block_size={self.config.block_size}")
            pos, mask = torch.arange(T, device=idx.device), None  # None: causal attention within idx
        else:
            cache = self.transformer.h[0].attn.kv_cache
            if cache is None:
                raise ValueError("input_pos needs KV caches: call model.setup_caches(batch, max_len) first")
            # (T, L): cached position j is visible to the token at input_pos[i] when j <= input_pos[i]
            pos, mask = input_pos, torch.arange(cache.k.size(2), device=idx.device) <= input_pos.unsqueeze(1)
        x = self._embed(idx, pos)
        for block in self.transformer.h:
            x, _ = block(x, input_pos, mask)
        if input_pos is not None:
            x = x[:, -1:]  # (B, 1, C)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def attention_weights(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention maps of every layer, each (B, nh, T, T), computed on the explicit path."""
        x = self._embed(idx, torch.arange(idx.size(1), device=idx.device))
        maps = []
        for block in self.transformer.h:
            x, w = block(x, need_weights=True)
            maps.append(w)
        return maps

    def _embed(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) at positions pos (T,) -> (B, T, C)."""
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))

    def setup_caches(self, batch: int, max_len: int) -> None:
        """Give every attention layer a KV cache for `batch` sequences of up to `max_len` positions. Caches of
        that shape, device and dtype are kept (a compiled decoding step then sees the same tensors from call
        to call); `clear_caches` frees them."""
        c, w = self.config, self.transformer.wte.weight
        old = self.transformer.h[0].attn.kv_cache
        # an inference-mode tensor cannot be updated outside inference mode: made in one, it serves only there
        want = ((batch, c.n_head, max_len, c.head_size), w.device, w.dtype, torch.is_inference_mode_enabled())
        if old is not None and (old.k.shape, old.k.device, old.k.dtype, old.k.is_inference()) == want:
            return
        self.clear_caches()  # free the old ones before allocating
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch, c.n_head, max_len, c.head_size, w.device, w.dtype)

    def clear_caches(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, **kwargs) -> torch.Tensor:
        """Continue idx (B, T) by max_new_tokens sampled tokens -> (B, T + n), as nanoGPT's model.generate.
        Other options (generator, stop_token, compile, ...): gptlab.model.sampling.generate's."""
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, **kwargs)

    def flops_per_token(self, seq_len: Optional[int] = None) -> float:
        """Training FLOPs per token (forward + backward): 6 per weight, plus attention's QK^T and AV
        (the estimate of the PaLM paper, appendix B)."""
        c, T = self.config, seq_len or self.config.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * T


@torch.no_grad()
def add_tokens(model: GPT, old: int, new: int) -> GPT:
    """The model for a tokenizer that grew from `old` to `new` tokens (special tokens, new characters): the
    table grows where it must, and the new ids' rows start as the mean of the trained ones, so a new token
    begins as an average token (a random row would give it a large, arbitrary logit). Returns `model`
    itself when its (padded) table already has the rows."""
    if new <= old:
        return model
    if new > model.config.vocab_size:
        grown = GPT(replace(model.config, vocab_size=new))
        state = model.state_dict()
        for key in ("transformer.wte.weight", "lm_head.weight"):
            if key in state:
                table = grown.state_dict()[key].clone()
                table[: state[key].size(0)] = state[key]
                state[key] = table
        grown.load_state_dict(state)
        model = grown.train(model.training)
    for table in {id(t): t for t in (model.transformer.wte.weight, model.lm_head.weight)}.values():
        table[old:new] = table[:old].mean(dim=0)
    return model


def adapt(model: GPT, spec: GPTConfig) -> GPT:
    """A GPT of `spec` holding `model`'s weights: the position table cut to a smaller block_size, rows added
    (as add_tokens adds them) for a larger vocab_size; the fields of CHANGEABLE_ON_RESUME need no weights."""
    old = model.config
    if spec.block_size > old.block_size:
        raise ConfigError(f"model.block_size={spec.block_size} is larger than the source's {old.block_size}: "
                          "positions past it were never trained; use at most that")
    if (spec.vocab_size or 0) < (old.vocab_size or 0):
        raise ConfigError(f"model.vocab_size={spec.vocab_size} is smaller than the source's {old.vocab_size}")
    model = add_tokens(model, old.vocab_size or 0, spec.vocab_size or 0)
    state = model.state_dict()
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][: spec.block_size]
    new = GPT(spec)
    new.load_state_dict(state)
    return new


def param_groups(model: nn.Module) -> list[dict]:
    """AdamW groups: matrices (Linear weights, embeddings) decay at the optimizer's weight_decay;
    biases and LayerNorm weights do not decay."""
    decay, no_decay = [], []
    for p in model.parameters():  # .parameters() yields a tied matrix once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    # names label the groups in logs (lr/decay)
    return [{"params": decay, "name": "decay"}, {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
