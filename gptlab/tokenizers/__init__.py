"""Tokenizers written in the project: text <-> token ids, trained on the user's own corpus.

`train_tokenizer(kind, text, **settings)` builds one from a corpus; `tokenizer_from_dict` rebuilds one
from the JSON that data caches and checkpoints carry.
"""

from __future__ import annotations

from typing import Any

from gptlab.tokenizers.base import StreamDecoder, Tokenizer, TokenizerError
from gptlab.tokenizers.bpe import ByteLevelBPE
from gptlab.tokenizers.char import CharTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {CharTokenizer.kind: CharTokenizer, ByteLevelBPE.kind: ByteLevelBPE}


def _lookup(kind: str) -> type[Tokenizer]:
    if kind not in TOKENIZERS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; known: {', '.join(sorted(TOKENIZERS))}")
    return TOKENIZERS[kind]


def train_tokenizer(kind: str, text: str, **settings: Any) -> Tokenizer:
    return _lookup(kind).train(text, **settings)  # type: ignore[attr-defined]


def tokenizer_from_dict(d: dict) -> Tokenizer:
    return _lookup(d.get("kind", "?")).from_dict(d)


__all__ = ["Tokenizer", "TokenizerError", "StreamDecoder", "CharTokenizer", "ByteLevelBPE", "train_tokenizer", "tokenizer_from_dict"]
