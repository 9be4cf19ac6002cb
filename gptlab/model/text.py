"""A request's text as its tokens arrive: whole characters only, ending before the first stop string.

Each token's text is added once (the tokenizer's StreamDecoder holds back only the bytes of an unfinished
character) and only the new text is searched for stop strings, so an answer of n tokens costs O(n), not O(n^2).
What might be the start of a stop string is held back until the next tokens say it is not: what `take()` hands
out is final, for a stream and for the whole answer alike.
"""

from __future__ import annotations

from typing import Sequence

from gptlab.tokenizers import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str] = ()) -> None:
        if any(not s for s in stops):
            raise ValueError("a stop string must not be empty")
        self.decoder, self.stops = tokenizer.decoder(), list(stops)
        self.longest = max(map(len, self.stops), default=0)
        self.text = ""  # so far, cut before a stop string once one is written
        self.taken = 0  # characters handed out by take()
        self.stopped = False  # a stop string was written
        self.closed = False  # no more tokens come

    def push(self, token: int) -> bool:
        """Add a token's text; True once a stop string has been written (the text then ends before it)."""
        if not self.stopped:
            self._add(self.decoder.push(token))
        return self.stopped

    def close(self) -> None:
        """No more tokens: what the decoder held back is final now."""
        if not self.stopped:
            self._add(self.decoder.flush())
        self.closed = True

    def take(self) -> str:
        """The final text not taken before."""
        end = len(self.text) if self.closed or self.stopped else len(self.text) - self._held()
        out, self.taken = self.text[self.taken:end], max(self.taken, end)
        return out

    def _add(self, piece: str) -> None:
        if not piece:
            return
        old = len(self.text)
        self.text += piece
        if self.stops:  # a stop string that ends in the new text starts at most longest - 1 characters before it
            start = max(0, old - self.longest + 1)
            found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if found:
                self.text, self.stopped = self.text[:min(found)], True

    def _held(self) -> int:
        """The longest tail of the text that a stop string starts with."""
        return max((k for s in self.stops for k in range(1, min(len(s), len(self.text) + 1))
                    if self.text.endswith(s[:k])), default=0)
