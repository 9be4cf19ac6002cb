"""Answering a conversation: the chat template's prompt, kept inside the context, continued by the engine until
the model writes `<|end|>`. `gptlab chat`, `gptlab serve`, eval's exact match and the end-of-run answers all take
their prompts from `fit` with the room `room` leaves, and answer through the engine (model/engine.py)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from gptlab.model.engine import Engine, Request, complete
from gptlab.model.gpt import GPT
from gptlab.model.sampling import GREEDY, SEED, SamplingConfig
from gptlab.tokenizers import Tokenizer
from gptlab.tokenizers.chat import Message, end_id, render


def room(block: int, max_new_tokens: int) -> int:
    """The one rule for context: the tokens a prompt may take, keeping space for an answer of up to max_new_tokens
    but at most a quarter of the context (a longer answer slides the window, as any generation does)."""
    return max(1, block - min(max_new_tokens, block // 4))


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


def reply(model: GPT, tokenizer: Tokenizer, messages: Sequence[Message], sampling: SamplingConfig = GREEDY,
          seed: int = SEED, on_text: Optional[Callable[[str], None]] = None) -> tuple[str, int]:
    """The model's answer to a conversation that ends with a user message, and how many old messages did not
    fit in the context. on_text streams the answer as it is generated."""
    ids, dropped = fit(tokenizer, messages, room(model.config.block_size, sampling.max_new_tokens))
    (text,) = complete(model, tokenizer, ids, sampling, seed=seed, on_text=on_text, stop_token=end_id(tokenizer))
    return text, dropped


def greedy_answers(model: GPT, tokenizer: Tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int],
                   batch_size: int = 64, on_done: Optional[Callable[[int], None]] = None) -> list[str]:
    """Greedy answers to many prompts (ids from `fit`), up to batch_size decoded at once, each prompt taking a row
    as one frees; max_new_tokens: each answer's budget. on_done(n): called as n more answers are finished."""
    engine = Engine(model, max(1, min(batch_size, len(prompts))), tokenizer)
    stop = end_id(tokenizer)
    requests = [Request(list(p), n, stop_token=stop) for p, n in zip(prompts, max_new_tokens)]

    def count(advanced: list[Request]) -> None:
        finished = sum(r.finished for r in advanced)
        if finished and on_done is not None:
            on_done(finished)

    engine.run(requests, on_step=count)
    return [r.text.text for r in requests]  # type: ignore[union-attr]
