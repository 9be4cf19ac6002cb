"""Tokenizers written in the project: text <-> token ids, trained on the user's own corpus.

`TOKENIZERS` is the one registry of kinds: `tokenizer=<kind>` in the configs, `"kind"` in saved JSON, and
each class's `settings` spec (the typed settings of `train`, with their defaults).
`train_tokenizer(kind, text, **settings)` builds one from a corpus; `tokenizer_from_dict` rebuilds one
from the JSON that data caches and checkpoints carry.
"""

from __future__ import annotations

from typing import Any

from gptlab.tokenizers.base import StreamDecoder, Tokenizer, TokenizerError
from gptlab.tokenizers.bpe import BPEConfig, ByteLevelBPE
from gptlab.tokenizers.char import CharConfig, CharTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {cls.kind: cls for cls in (CharTokenizer, ByteLevelBPE)}


def tokenizer_class(kind: str) -> type[Tokenizer]:
    if kind not in TOKENIZERS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; known: {', '.join(sorted(TOKENIZERS))}")
    return TOKENIZERS[kind]


def train_tokenizer(kind: str, text: str, **settings: Any) -> Tokenizer:
    return tokenizer_class(kind).train(text, **settings)


def tokenizer_from_dict(d: dict) -> Tokenizer:
    return tokenizer_class(d.get("kind", "?")).from_dict(d)


__all__ = ["Tokenizer", "TokenizerError", "StreamDecoder", "CharTokenizer", "CharConfig", "ByteLevelBPE",
           "BPEConfig", "TOKENIZERS", "tokenizer_class", "train_tokenizer", "tokenizer_from_dict"]
