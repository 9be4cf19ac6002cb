"""Character-level tokenizer: one token per distinct character of the corpus, in sorted order.

Special tokens (`<|user|>`, ...) are entries longer than one character, appended after the characters;
text never encodes to them, so a message that happens to contain "<|user|>" stays ordinary text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from gptlab.tokenizers.base import Tokenizer, TokenizerError


@dataclass
class CharConfig:
    """One token per distinct character of the corpus (nothing to set)."""

    kind: str = "char"


class CharTokenizer(Tokenizer):
    kind = "char"
    settings = CharConfig

    def __init__(self, tokens: Sequence[str]) -> None:
        """tokens: id -> text; single characters, and special tokens (longer strings) anywhere among them."""
        if len(set(tokens)) != len(tokens) or any(len(t) == 0 for t in tokens):
            raise TokenizerError("a char vocabulary must be distinct, non-empty entries")
        self.tokens = list(tokens)
        self.stoi = {c: i for i, c in enumerate(self.tokens) if len(c) == 1}  # what text encodes to
        self.special_tokens = {t: i for i, t in enumerate(self.tokens) if len(t) > 1}

    @property
    def chars(self) -> list[str]:
        return [t for t in self.tokens if len(t) == 1]

    @classmethod
    def train(cls, text: str, **settings: Any) -> "CharTokenizer":
        CharConfig(**{"kind": cls.kind, **settings})  # no settings: an unknown one is an error
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def with_specials(self, specials: Iterable[str]) -> "CharTokenizer":
        new = [s for s in dict.fromkeys(specials) if s not in self.special_tokens]
        if any(len(s) < 2 for s in new):
            raise TokenizerError("a char tokenizer's special tokens are longer than one character")
        return CharTokenizer(self.tokens + new) if new else self

    def with_chars(self, text: str) -> "CharTokenizer":
        """This vocabulary plus the characters of text it lacks, with new ids after the old ones (which keep theirs)."""
        new = sorted(set(text) - self.stoi.keys())
        return CharTokenizer(self.tokens + new) if new else self

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_corpus(self, text: str) -> np.ndarray:
        return self.encode_array(text)

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised encode for whole corpora: map code points through a lookup table."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if codes.size == 0:
            return np.zeros(0, dtype=np.int64)
        table = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
        for c, i in self.stoi.items():
            if ord(c) < table.size:
                table[ord(c)] = i
        ids = table[codes]
        if (ids < 0).any():
            missing = sorted({chr(c) for c in codes[ids < 0]})
            shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise TokenizerError(f"{len(missing)} character(s) not in the char vocabulary of {self.vocab_size}: "
                                 f"{shown}; use only characters of the training text")
        return ids

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of text this vocabulary cannot encode."""
        return sorted(set(text) - self.stoi.keys())

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.tokens[int(i)] for i in ids)

    def to_dict(self) -> dict:
        if not self.special_tokens:  # the plain form every gptlab version reads
            return {"kind": self.kind, "chars": "".join(self.tokens)}
        return {"kind": self.kind, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls(list(d["tokens"]) if "tokens" in d else list(d["chars"]))
