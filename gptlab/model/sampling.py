"""How the next token is picked: temperature, top-k and nucleus (top-p) sampling, and the settings' defaults.

`SamplingConfig` is the one place of the defaults: `gptlab generate`, `gptlab chat` and the training samples take
them as they are. OpenAI's API has defaults of its own that its clients count on (`OPENAI`): `gptlab serve` uses
those where a request says nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

SEED = 1337  # the default seed of everything random: the weights, the order of the data, the samples


def check_sampling(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or null to keep every token), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p}")


@dataclass
class SamplingConfig:
    """How text is sampled from a model."""

    max_new_tokens: int = 500  # the most tokens to add to the prompt (a chat's answer usually ends sooner)
    temperature: float = 0.8  # 0: greedy (always the most likely token)
    top_k: Optional[int] = 200  # sample among the k most likely tokens; null: all
    top_p: Optional[float] = None  # nucleus sampling, in (0, 1]
    use_cache: bool = True  # KV cache: read the prompt once, then one token per step
    compile: Optional[bool] = None  # torch.compile the one-token step (CUDA graphs on a GPU); null: on CUDA only

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        check_sampling(self.temperature, self.top_k, self.top_p)


GREEDY = SamplingConfig(temperature=0.0, top_k=None)  # scoring answers (eval's exact match, the RL's pass@1)
# OpenAI's defaults: temperature 1, every token (top_p 1), and 16 tokens for a completion; a chat's answer gets
# what room the context leaves
OPENAI = SamplingConfig(max_new_tokens=16, temperature=1.0, top_k=None, top_p=None)


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


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick the next token of each row. logits: (B, V) -> (B, 1)."""
    logits = logits.float()  # softmax is more accurate in fp32, and a bf16 argmax is slow on CPUs
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
