"""Autoregressive generation: temperature, top-k and nucleus (top-p) sampling, with or without a KV cache."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from gptlab.model.gpt import GPT


def check_sampling(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or null to keep every token), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus. logits: (B, V)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # the nucleus: the smallest prefix whose probability reaches top_p. A token is dropped when the
        # tokens before it already reach top_p; the most likely token is always kept
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Pick the next token of each row. logits: (B, V) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    use_cache: bool = True,
    stop_token: Optional[int] = None,
    on_token: Optional[Callable[[torch.Tensor], None]] = None,
    vocab_size: Optional[int] = None,
) -> torch.Tensor:
    """Continue idx (B, T) by up to max_new_tokens tokens; returns (B, T + n).

    Without a cache every step re-reads the last block_size tokens. With it, the prompt is read once
    (prefill) and each step feeds only the newest token. When the cache is full the window slides: the
    last 3/4 of a block is read again into a fresh cache (positions are absolute, so old keys cannot be
    shifted). Generation stops early once every row has produced stop_token. vocab_size: sample only
    ids below it, for a model whose vocabulary is padded past its tokenizer's (the padding ids are
    never trained towards, and an untrained model would pick them).
    """
    check_sampling(temperature, top_k, top_p)
    block = model.config.block_size
    was_training = model.training
    model.eval()
    caches, fed = None, 0  # fed: how many tokens of idx the cache holds
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    try:
        for _ in range(max_new_tokens):
            if not use_cache:
                logits, _ = model(idx[:, -block:])
            else:
                if caches is None or caches[0].length + (idx.size(1) - fed) > block:
                    keep = min(idx.size(1), block if caches is None else max(1, 3 * block // 4))
                    caches, fed = model.new_kv_caches(idx.size(0)), idx.size(1) - keep
                logits, _ = model(idx[:, fed:], kv_caches=caches)
                fed = idx.size(1)
            nxt = sample_next(logits[:, -1, :vocab_size], temperature, top_k, top_p, generator)  # (B, 1)
            if stop_token is not None:
                nxt = nxt.masked_fill(done.unsqueeze(1), stop_token)  # finished rows only pad
                done |= nxt.squeeze(1) == stop_token
            idx = torch.cat([idx, nxt], dim=1)
            if on_token is not None:
                on_token(nxt)
            if stop_token is not None and bool(done.all()):
                break
    finally:
        model.train(was_training)
    return idx
