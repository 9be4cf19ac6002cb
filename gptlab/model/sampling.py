"""Autoregressive generation: temperature, top-k and nucleus (top-p) sampling, with or without a KV cache.

`complete` is the one path from a prompt to text: `gptlab.generate`, the training samples and the
end-of-run sample all call it, so they treat prompts, end-of-text and padded vocabularies alike.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence, Union

import torch

if TYPE_CHECKING:  # the model calls `generate` (GPT.generate); tokenizers are known by their interface only
    from gptlab.model.gpt import GPT
    from gptlab.tokenizers import Tokenizer

SEED = 1337  # the default seed of everything random: the weights, the order of the data, the samples


@dataclass
class SamplingConfig:
    """How text is sampled from a model."""

    max_new_tokens: int = 500  # how many tokens to add to the prompt
    temperature: float = 0.8  # 0: greedy (always the most likely token)
    top_k: Optional[int] = 200  # sample among the k most likely tokens; null: all
    top_p: Optional[float] = None  # nucleus sampling, in (0, 1]
    use_cache: bool = True  # KV cache: read the prompt once, then one token per step
    compile: Optional[bool] = None  # torch.compile the one-token step (CUDA graphs on a GPU); null: on CUDA only

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or null to keep every token), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {self.top_p}")


def prompt_ids(tokenizer: "Tokenizer", prompt: str) -> list[int]:
    """The prompt's token ids; an empty prompt starts from the end-of-text token, where there is one."""
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        if tokenizer.eot_id is None:
            raise ValueError("the prompt is empty and this tokenizer has no start token")
        ids = [tokenizer.eot_id]
    return ids


def complete(model: GPT, tokenizer: "Tokenizer", prompt: Union[str, Sequence[int], Sequence[Sequence[int]]],
             sampling: SamplingConfig = SamplingConfig(), num_samples: int = 1, seed: int = SEED,
             on_text: Optional[Callable[[str], None]] = None, stop_token: Optional[int] = None) -> list[str]:
    """Continue `prompt` num_samples times (one batch); return each continuation (without the prompt),
    cut at the stop token (default: the tokenizer's end-of-text). on_text: called with each new piece of
    text of the first sample as it is generated (whole characters only), for streaming.

    The prompt is text, token ids (a rendered chat, say), or several prompts of ids of one length, each
    continued once, as one batch (greedy evaluation of many questions)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = model.transformer.wte.weight.device
    if isinstance(prompt, str):
        rows = [prompt_ids(tokenizer, prompt)] * num_samples
    elif prompt and not isinstance(prompt[0], int):
        rows = [list(p) for p in prompt]  # type: ignore[union-attr]
        if len({len(r) for r in rows}) != 1 or num_samples != 1:
            raise ValueError("a batch of prompts must be of one length, each continued once")
    else:
        rows = [list(prompt)] * num_samples  # type: ignore[arg-type]
    if not rows[0]:
        raise ValueError("the prompt has no tokens")
    idx = torch.tensor(rows, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    decoder = tokenizer.decoder()
    stop = tokenizer.eot_id if stop_token is None else stop_token
    stopped = False  # the first sample reached its stop token: nothing more of it is shown

    def on_token(nxt: torch.Tensor) -> None:  # streaming only: reading a token waits for the device
        nonlocal stopped
        token = int(nxt[0, 0])
        stopped = stopped or token == stop
        if not stopped:
            on_text(decoder.push(token))

    out = generate(model, idx, sampling.max_new_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
                   top_p=sampling.top_p, generator=gen, use_cache=sampling.use_cache, stop_token=stop,
                   on_token=on_token if on_text is not None else None, vocab_size=tokenizer.vocab_size,
                   compile=sampling.compile)
    if on_text is not None:
        on_text(decoder.flush())
    texts = []
    for row in out.tolist():
        new = row[idx.size(1):]
        if stop is not None and stop in new:
            new = new[: new.index(stop)]
        texts.append(tokenizer.decode(new))
    return texts


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


def decode_one(model: GPT, token: torch.Tensor, input_pos: torch.Tensor,
               start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One step with the KV caches: token (B, 1) at position input_pos (1,) -> next-token logits (B, vocab);
    start (B,): where each left-padded row begins. Its shapes never change, so torch.compile can capture it
    whole as a CUDA graph."""
    return model(token, input_pos=input_pos, start=start)[0][:, -1]


@functools.cache
def compiled_decode_one(mode: str) -> Callable[..., torch.Tensor]:
    return torch.compile(decode_one, mode=mode, fullgraph=True)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the duration; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, generator: Optional[torch.Generator] = None, use_cache: bool = True,
             stop_token: Optional[int] = None, on_token: Optional[Callable[[torch.Tensor], Optional[bool]]] = None,
             vocab_size: Optional[int] = None, compile: Optional[bool] = None,
             row_start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Continue idx (B, T) by up to max_new_tokens tokens; returns (B, T + n), on the model's device.

    The model reads a window of at most block_size tokens. Without a cache it re-reads the whole window
    every step. With one (`GPT.setup_caches`), the window is read once (prefill) and each step feeds only
    the newest token (`decode_one`); compile: torch.compile that step (None: on CUDA, where it runs as a
    CUDA graph). A full window slides: positions are absolute, so cached keys cannot be shifted, and the
    last 3/4 of a block is read again (both paths slide alike, so they agree token for token).

    Generation stops early once every row has produced stop_token. vocab_size: sample only ids below it,
    for a model whose vocabulary is padded past its tokenizer's (the padding ids are never trained
    towards, and an untrained model would pick them). on_token is called with each new (B, 1) token; it
    returns True to end generation there.
    row_start (B,): prompts of different lengths in one batch, left-padded to idx's length, row b's beginning at
    idx[b, row_start[b]] (its positions count from there; it never attends to the padding). The KV cache reads them
    (use_cache), and prompt and new tokens must fit in block_size (a sliding window would slide the rows
    unequally). The settings are checked where they are read (SamplingConfig); the generator must be on the
    model's device.
    """
    device = model.transformer.wte.weight.device
    block = model.config.block_size
    B, T = idx.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=device)  # the prompt, then the new tokens
    out[:, :T] = idx
    if compile is None:
        compile = device.type == "cuda"
    step = compiled_decode_one("reduce-overhead" if device.type == "cuda" else "default") if compile else decode_one
    if row_start is not None and (not use_cache or T + max_new_tokens > block):
        raise ValueError(f"left-padded prompts (row_start=) need the KV cache and prompt + new tokens within the block "
                         f"({T} + {max_new_tokens} > {block})" if use_cache else "left-padded prompts need use_cache")
    done = torch.zeros(B, dtype=torch.bool, device=device)
    t, start = T, max(0, T - block)  # the model reads the window out[:, start:t]
    input_pos: Optional[torch.Tensor] = None  # where the cache's next token goes; None: (re)read the window
    with eval_mode(model):
        if use_cache and max_new_tokens > 0:
            model.setup_caches(B, min(block, T + max_new_tokens))
        for i in range(max_new_tokens):
            if t - start > block:  # the window is full: slide it, to be read again
                start, input_pos = t - max(1, 3 * block // 4), None
            if not use_cache:
                logits = model(out[:, start:t])[0][:, -1]
            elif input_pos is None:  # prefill: the whole window in one pass
                window = torch.arange(t - start, device=device)
                logits = model(out[:, start:t], input_pos=window, start=row_start)[0][:, -1]
                input_pos = torch.tensor([t - start], device=device)
            else:
                logits = step(model, nxt, input_pos, row_start)
                input_pos += 1  # on the device: no host-to-device copy per token
            nxt = sample_next(logits[:, :vocab_size], temperature, top_k, top_p, generator)  # (B, 1)
            if stop_token is not None:
                nxt = nxt.masked_fill(done.unsqueeze(1), stop_token)  # finished rows only pad
                done |= nxt.squeeze(1) == stop_token
            out[:, t : t + 1] = nxt
            t += 1
            if on_token is not None and on_token(nxt):  # the caller has what it wanted (a stop sequence)
                break
            # reading `done` waits for the device: read it every 16 tokens, and cut what follows the last stop
            if stop_token is not None and (i % 16 == 15 or i == max_new_tokens - 1) and bool(done.all()):
                first_stop = (out[:, T:t] == stop_token).int().argmax(dim=1)  # (B,)
                t = T + int(first_stop.max()) + 1  # where the last row stopped
                break
    return out[:, :t]
