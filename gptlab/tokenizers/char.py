"""Character-level tokenizer: one token per distinct character of the corpus, in sorted order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from gptlab.tokenizers.base import Tokenizer, TokenizerError


@dataclass
class CharConfig:
    """One token per distinct character of the corpus (nothing to set)."""

    kind: str = "char"


class CharTokenizer(Tokenizer):
    kind = "char"
    settings = CharConfig

    def __init__(self, chars: Sequence[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise TokenizerError("a char vocabulary must be distinct single characters")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str, **settings: Any) -> "CharTokenizer":
        CharConfig(**{"kind": cls.kind, **settings})  # no settings: an unknown one is an error
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

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
            raise TokenizerError(
                f"{len(missing)} character(s) not in the char vocabulary of {self.vocab_size}: {shown}; "
                "use only characters of the training text"
            )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls(list(d["chars"]))
