"""Answering a conversation: the chat template's prompt, kept inside the context, continued by `complete`
until the model writes `<|end|>`. The chat and eval's exact-match score both answer through here."""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Optional, Sequence

from gptlab.model.gpt import GPT
from gptlab.model.sampling import SEED, SamplingConfig, complete
from gptlab.tokenizers import Tokenizer
from gptlab.tokenizers.chat import Message, end_id, render

GREEDY = SamplingConfig(temperature=0.0, top_k=None)


def fit(tokenizer: Tokenizer, messages: Sequence[Message], room: int) -> tuple[list[int], int]:
    """The prompt for the next answer (ids ending in `<|assistant|>`), at most `room` tokens if dropping the
    oldest turns can make it so; system messages are kept. Returns the ids and how many messages were left out.
    A single message longer than the room is kept whole: generation then sees only its last tokens."""
    sizes = [len(render(tokenizer, [m])[0]) for m in messages]  # each message encoded once, however many go
    total, last = sum(sizes) + 1, len(messages) - 1  # + 1: the open <|assistant|> marker
    gone, start = [False] * len(messages), 0  # before `start`, only system messages may remain
    while total > room:
        first = next((i for i in range(start, last) if messages[i]["role"] != "system"), None)
        if first is None:
            break
        # the oldest turn goes: its user message and the answers up to the next user message
        end = next((i for i in range(first + 1, last) if messages[i]["role"] == "user"), last)
        total -= sum(sizes[first:end])
        gone[first:end] = [True] * (end - first)
        start = end
    ids, _ = render(tokenizer, [m for m, g in zip(messages, gone) if not g], reply=True)
    return ids, sum(gone)


def room(model: GPT, sampling: SamplingConfig) -> int:
    """Tokens of context left for the prompt, keeping space for an answer of up to a quarter of the context
    (a longer answer slides the window, as any generation does)."""
    block = model.config.block_size
    return max(1, block - min(sampling.max_new_tokens, block // 4))


def reply(model: GPT, tokenizer: Tokenizer, messages: Sequence[Message], sampling: SamplingConfig = GREEDY,
          seed: int = SEED, on_text: Optional[Callable[[str], None]] = None) -> tuple[str, int]:
    """The model's answer to a conversation that ends with a user message, and how many old messages did not
    fit in the context. on_text streams the answer as it is generated."""
    ids, dropped = fit(tokenizer, messages, room(model, sampling))
    (text,) = complete(model, tokenizer, ids, sampling, seed=seed, on_text=on_text, stop_token=end_id(tokenizer))
    return text, dropped


def greedy_answers(model: GPT, tokenizer: Tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int],
                   batch_size: int = 64, on_batch: Optional[Callable[[int], None]] = None) -> list[str]:
    """Greedy answers to many prompts (ids from `fit`), batched by prompt length so no row needs padding;
    max_new_tokens: the budget of each prompt's answer. on_batch(n): called after each batch of n prompts."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    out: list[str] = [""] * len(prompts)
    stop = end_id(tokenizer)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            which = group[start : start + batch_size]
            budget = max(max_new_tokens[i] for i in which)
            sampling = SamplingConfig(max_new_tokens=budget, temperature=0.0, top_k=None)
            texts = complete(model, tokenizer, [prompts[i] for i in which], sampling, stop_token=stop)
            for i, text in zip(which, texts):
                out[i] = text
            if on_batch is not None:
                on_batch(len(which))
    return out
