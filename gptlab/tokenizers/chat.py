"""The chat template: conversations <-> token ids, with role markers that are special tokens.

One conversation renders as, for each message,

    <|user|> What is 2 + 3? <|end|> <|assistant|> 5 <|end|>

where the markers are token ids of their own (never produced by encoding text, so a message that
contains "<|user|>" is just text). `render` is the one function from messages to ids: training, eval and
chat all call it. Its loss mask is True exactly on the tokens an assistant wrote and on the `<|end|>` that
closes each assistant turn: the model learns to answer, and to stop, and nothing else.
"""

from __future__ import annotations

from typing import Sequence, TypedDict

from gptlab.tokenizers.base import Tokenizer, TokenizerError

ROLES = ("system", "user", "assistant")
MARKERS = {role: f"<|{role}|>" for role in ROLES}
END = "<|end|>"
SPECIALS = (*MARKERS.values(), END)


class Message(TypedDict):
    role: str  # system, user or assistant
    content: str


def chat_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with the template's special tokens (new ids at the end where it lacks them)."""
    return tokenizer.with_specials(SPECIALS)


def has_template(tokenizer: Tokenizer) -> bool:
    return all(s in tokenizer.special_tokens for s in SPECIALS)


def end_id(tokenizer: Tokenizer) -> int:
    return _id(tokenizer, END)


def render(tokenizer: Tokenizer, messages: Sequence[Message], reply: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation and its loss mask (True: a token the model is trained to predict).

    reply=True ends with an open `<|assistant|>` marker: the prompt from which the model writes the next
    answer (and stops at `<|end|>`)."""
    ids: list[int] = []
    mask: list[bool] = []
    for m in messages:
        if m["role"] not in MARKERS:
            raise TokenizerError(f"unknown role {m['role']!r}: a message's role is one of {', '.join(ROLES)}")
        body = tokenizer.encode(m["content"]) if m["content"] else []
        learn = m["role"] == "assistant"
        ids += [_id(tokenizer, MARKERS[m["role"]]), *body, _id(tokenizer, END)]
        mask += [False] + [learn] * (len(body) + 1)  # the answer and its <|end|>: learnt; the marker: given
    if reply:
        ids.append(_id(tokenizer, MARKERS["assistant"]))
        mask.append(False)
    return ids, mask


def parse(tokenizer: Tokenizer, ids: Sequence[int]) -> list[Message]:
    """The messages of rendered ids (the inverse of `render`, for complete messages)."""
    role_of = {_id(tokenizer, marker): role for role, marker in MARKERS.items()}
    end = end_id(tokenizer)
    out: list[Message] = []
    i = 0
    while i < len(ids):
        if ids[i] not in role_of:
            raise TokenizerError(f"token {i} is not a role marker: not a rendered conversation")
        j = list(ids).index(end, i + 1) if end in ids[i + 1 :] else len(ids)
        out.append({"role": role_of[ids[i]], "content": tokenizer.decode(ids[i + 1 : j])})
        i = j + 1
    return out


def _id(tokenizer: Tokenizer, special: str) -> int:
    try:
        return tokenizer.special_tokens[special]
    except KeyError:
        raise TokenizerError(f"the tokenizer has no {special} token: the model was not fine-tuned for chat "
                             "(train it on data=chat first)") from None
