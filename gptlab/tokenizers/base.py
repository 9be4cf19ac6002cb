"""What every tokenizer offers, so the data pipeline, the model and generation never ask which one they hold."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable, Optional, Sequence

import numpy as np


class TokenizerError(ValueError):
    """Text a tokenizer cannot encode, or a saved tokenizer it cannot read."""


class Tokenizer(ABC):
    kind: ClassVar[str]  # the name in configs and in saved JSON ("char", "bpe")
    settings: ClassVar[type]  # the typed spec of `train`'s settings: a dataclass with the defaults

    @classmethod
    @abstractmethod
    def train(cls, text: str, **settings: Any) -> "Tokenizer":
        """Build a tokenizer from a corpus; settings are the fields of `cls.settings`."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def to_dict(self) -> dict:
        """Everything needed to rebuild the tokenizer, as plain JSON-able values (with a "kind" key)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, d: dict) -> "Tokenizer": ...

    def encode_corpus(self, text: str) -> np.ndarray:
        """Encode a whole training corpus. The corpus is the user's own, so special tokens written in it
        (e.g. `<|endoftext|>` between documents) count as special; tokenizers override this to go fast."""
        return np.asarray(self.encode(text), dtype=np.int64)

    @property
    def eot_id(self) -> Optional[int]:
        """The end-of-text token, if the vocabulary has one; generation stops there."""
        return None

    special_tokens: dict[str, int]  # text -> id of the tokens that text never encodes to (markers, end-of-text)

    @abstractmethod
    def with_specials(self, specials: Iterable[str]) -> "Tokenizer":
        """This tokenizer plus the special tokens it lacks, with new ids after all the old ones (which keep
        theirs, so a trained model's embedding rows still mean the same tokens)."""

    def with_chars(self, text: str) -> "Tokenizer":
        """This tokenizer, able to encode every character of text (a char vocabulary grows; BPE already can)."""
        return self

    def unknown(self, text: str) -> list[str]:
        """The characters of text this tokenizer cannot encode (none, for byte-level BPE)."""
        return []

    def text_bytes(self) -> list[int]:
        """How many bytes of UTF-8 text each token id stands for (0 for a special token, which stands for none):
        bits per byte divide a loss by these, whatever the tokenizer."""
        specials = set(self.special_tokens.values())
        return [0 if i in specials else len(self.decode([i]).encode("utf-8")) for i in range(self.vocab_size)]

    def decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns tokens into text one at a time, holding back bytes until they form whole characters.

    Byte-level tokens may end in the middle of a UTF-8 character; printing each token's text as it comes would
    show replacement characters. Only the tokens since the last whole character are decoded again (usually
    just the new one), so a long text costs no more per token than a short one.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pending: list[int] = []  # tokens since the last character boundary
        self.emitted = 0  # characters of their text already handed out

    def push(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        stable = len(text.rstrip("\ufffd"))  # a trailing replacement char may still be completed
        out = text[self.emitted : stable]
        if stable == len(text):  # a character boundary: start afresh
            self.pending, self.emitted = [], 0
        else:
            self.emitted = max(self.emitted, stable)
        return out

    def flush(self) -> str:
        out = self.tokenizer.decode(self.pending)[self.emitted :]
        self.pending, self.emitted = [], 0
        return out
