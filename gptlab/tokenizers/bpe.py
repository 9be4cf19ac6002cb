"""Byte-level BPE (byte-pair encoding), as in GPT-2: trained on the user's corpus, or loaded from GPT-2 files.

Text -> tokens: (1) pre-tokenization cuts the text into chunks by GPT-2's split rule (`GPT2_SPLIT_PATTERN`), and
no merge crosses a chunk, so a token never spans two words; (2) each chunk becomes its UTF-8 bytes, the 256 base
tokens, so nothing is ever "unknown"; (3) the ranked merges are applied, the lowest-ranked pair present first,
every occurrence left to right: exactly GPT-2's reference `bpe()`. Special tokens ("<|endoftext|>") have ids of
their own and are recognised in text only when asked (`ByteLevelBPE.encode`). Training (`ByteLevelBPE.train`)
counts neighbouring pairs over the distinct chunks (weighted by their counts), merges the most frequent, updates
the counts and repeats until the vocabulary is full. Saved form (`to_dict`): tokens spelt through GPT-2's
byte-to-character table (`bytes_to_unicode`: a space is "Ġ"), as GPT-2's vocab.json and merges.txt spell them
(`from_vocab_merges` loads that pair, with its ids).
"""

from __future__ import annotations

import functools
import heapq
import json
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import accumulate, chain
from os import PathLike
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Literal, Mapping, Optional, Sequence, Union

import numpy as np

from gptlab.tokenizers.base import Tokenizer, TokenizerError

__all__ = ["ByteLevelBPE", "EOT", "GPT2_SPLIT_PATTERN", "bytes_to_unicode", "pretokenize", "str_to_token",
           "text_pieces", "token_to_str"]

EOT = "<|endoftext|>"
MAX_VOCAB_SIZE = 1 << 16  # ids fit in uint16, which the token cache uses for vocabularies this size


@dataclass
class BPEConfig:
    """Byte-level BPE (GPT-2 style), trained on the training split of your corpus."""

    kind: str = "bpe"
    vocab_size: int = 4096  # 256 bytes + merges + special tokens; up to 65,536
    special_tokens: list[str] = field(default_factory=lambda: [EOT])
    min_frequency: int = 2  # stop merging pairs seen fewer times than this
    train_chars: Optional[int] = 10_000_000  # the data layer trains on this many characters of the training documents; None: all
    show_progress: bool = True

    def __post_init__(self) -> None:
        smallest = 256 + len(self.special_tokens or ())
        if not smallest <= self.vocab_size <= MAX_VOCAB_SIZE:
            raise TokenizerError(f"tokenizer.vocab_size must be in [{smallest}, {MAX_VOCAB_SIZE}] (256 bytes + "
                                 f"{smallest - 256} special token(s) at least), got {self.vocab_size}")
        if self.min_frequency < 1:
            raise TokenizerError(f"tokenizer.min_frequency must be >= 1, got {self.min_frequency}")
        if self.train_chars is not None and self.train_chars < 1:
            raise TokenizerError(f"tokenizer.train_chars must be >= 1 (or null: all), got {self.train_chars}")


# GPT-2's split rule, as GPT-2 and Hugging Face's ByteLevel pre-tokenizer write it (with the `regex`
# package or Oniguruma, which know \p{L} "any letter" and \p{N} "any number"). Python's `re` knows neither,
# so `_split_regex` spells the classes out from the Unicode database; this string is documentation only.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# \s in that pattern is Unicode's White_Space property. Python's \s is wider: it also takes the four
# information separators \x1c-\x1f, which GPT-2 (and Hugging Face) count as "other" characters.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# Characters outside the Basic Multilingual Plane (emoji, historic scripts, math letters). `re` checks the
# non-BMP part of a character class range by range, which makes the letter and number classes slow for
# every character; so the classes below hold BMP characters only and `pretokenize` stands in a BMP
# character of the same class for each non-BMP one (the split depends only on the classes).
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_ASTRAL_STAND_IN = {"L": "x", "N": "0"}  # anything else (symbols, emoji, private use) stands in as "#"

# Where a long text may be cut into pieces that pre-tokenize exactly as the whole: just before a newline
# or space that follows a non-whitespace character. No chunk holds a non-whitespace character followed by
# a whitespace one (the only whitespace a word, number or symbol chunk may hold is one leading space), so a
# chunk always ends there, and the split has no look-behind. (Python's \S excludes \x1c-\x1f too, which
# only makes the rule stricter.)
_SAFE_CUT = re.compile(r"(?<=\S)[\n ]")
PIECE_CHARS = 1 << 20  # how much text is pre-tokenized at once when counting or encoding big texts

_NO_MERGE = 1 << 62  # the "rank" of a pair that has no merge
_CACHE_LIMIT = 200_000  # chunks remembered by an encoder before it forgets them all and starts again

AllowedSpecial = Union[Literal["all"], str, Collection[str], None]


# --- the byte <-> character table of GPT-2's vocab.json and merges.txt -------------------------------


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to 256 printable characters.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the
    other 68 (controls, space, soft hyphen, ...) take the characters from U+0100 on, in byte order. So every
    token's bytes read as a string with no spaces or control characters: b" the" is "Ġthe".
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]  # in byte order: U+0100, U+0101, ...
    return {b: chr(b) if b in printable else chr(256 + others.index(b)) for b in range(256)}


@functools.lru_cache(maxsize=None)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_str(data: bytes) -> str:
    """A token's bytes in GPT-2's readable spelling (b" the" -> "Ġthe")."""
    return "".join(map(bytes_to_unicode().__getitem__, data))


def str_to_token(text: str) -> bytes:
    """Inverse of `token_to_str`; a character outside the table is an error."""
    table = _unicode_to_bytes()
    try:
        return bytes(table[c] for c in text)
    except KeyError as e:
        raise TokenizerError(f"{text!r} is not a token in GPT-2's byte spelling (no byte for {e.args[0]!r})") from None


# --- pre-tokenization ---------------------------------------------------------------------------------


def _char_class(pred) -> str:
    """The BMP characters for which pred(category) holds, as the body of a regex character class."""
    parts, start = [], None
    for cp in range(0x10001):
        inside = cp < 0x10000 and pred(unicodedata.category(chr(cp)))
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            last = cp - 1
            parts.append(f"\\u{start:04x}" if start == last else f"\\u{start:04x}-\\u{last:04x}")
            start = None
    return "".join(parts)


@functools.lru_cache(maxsize=None)
def _split_regex() -> re.Pattern:
    """GPT2_SPLIT_PATTERN for Python's `re`, with \\p{L}, \\p{N} and \\s spelled out (BMP characters only)."""
    letters = _char_class(lambda cat: cat[0] == "L")
    numbers = _char_class(lambda cat: cat[0] == "N")
    ws = _WHITESPACE
    return re.compile(
        r"'(?:s|t|re|ve|m|ll|d)"  # contractions (same alternatives as GPT-2's, grouped)
        rf"| ?[{letters}]+"  # a word, maybe led by one space
        rf"| ?[{numbers}]+"  # a number
        rf"| ?[^{ws}{letters}{numbers}]+"  # punctuation, symbols, marks, controls
        rf"|[{ws}]+(?![^{ws}])"  # whitespace, but for its last character if a non-space follows...
        rf"|[{ws}]+"  # ...which is a chunk of its own, unless it is a space that leads the next chunk
    )


def pretokenize(text: str) -> list[str]:
    """Cut text into GPT-2 chunks: `"Hello  world!\\n"` -> `["Hello", " ", " world", "!", "\\n"]`.

    The chunks concatenate back to the text. Matches Hugging Face's ByteLevel pre-tokenizer (use_regex=True,
    add_prefix_space=False) for characters of the Unicode version Python's `unicodedata` knows.
    """
    split = _split_regex()
    if text.isascii() or not _ASTRAL.search(text):
        return split.findall(text)
    # split a copy whose non-BMP characters are replaced by BMP ones of the same class (same length,
    # same chunk boundaries), then cut the real text at the chunk ends
    masked = text.translate({ord(c): _ASTRAL_STAND_IN.get(unicodedata.category(c)[0], "#")
                             for c in set(_ASTRAL.findall(text))})
    ends = list(accumulate(map(len, split.findall(masked))))
    return [text[start:end] for start, end in zip([0, *ends], ends)]


def text_pieces(text: str, size: Optional[int] = None) -> Iterator[str]:
    """Cut text into pieces of about `size` (default PIECE_CHARS) characters that pre-tokenize exactly as
    the whole text does. A text with no safe place to cut stays whole."""
    size = size or PIECE_CHARS
    start = 0
    while len(text) - start > size:
        cut = _SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.start()]
        start = cut.start()
    yield text[start:]


def _chunk_bytes(chunk: str) -> bytes:
    """UTF-8 bytes of a chunk. Lone surrogates U+DC80..U+DCFF (how `encode_bytes` carries bytes that are not
    UTF-8) give back those raw bytes; other lone surrogates are written as UTF-8 would write them."""
    try:
        return chunk.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return chunk.encode("utf-8", "surrogatepass")


# --- applying merges to one chunk ---------------------------------------------------------------------


def _merge(ids: list[int], ranks: dict, merged: list[int]) -> list[int]:
    """Apply the merges to one chunk's ids, lowest rank first and, within a rank, left to right: O(n log n).

    Tokens form a linked list; a heap holds (rank, position) of every mergeable neighbour pair, so the
    lowest rank comes first and, within a rank, the leftmost. Heap entries whose tokens have changed since
    they were pushed are recognised and skipped.
    """
    n = len(ids)
    tok = list(ids)
    nxt = list(range(1, n + 1))  # n: no next token
    prv = list(range(-1, n - 1))  # -1: no previous token
    heap = [(r, i) for i in range(n - 1) if (r := ranks.get((tok[i], tok[i + 1]), _NO_MERGE)) != _NO_MERGE]
    heapq.heapify(heap)
    while heap:
        r, i = heapq.heappop(heap)
        j = nxt[i]
        if tok[i] is None or j >= n or ranks.get((tok[i], tok[j])) != r:
            continue  # stale: a token of this pair was merged into another since
        tok[i], tok[j] = merged[r], None
        nxt[i] = nxt[j]
        if nxt[i] < n:
            prv[nxt[i]] = i
        for left, right in ((prv[i], i), (i, nxt[i])):
            if left >= 0 and right < n:
                rank = ranks.get((tok[left], tok[right]), _NO_MERGE)
                if rank != _NO_MERGE:
                    heapq.heappush(heap, (rank, left))
    return [t for t in tok if t is not None]


# --- the tokenizer --------------------------------------------------------------------------------------


class ByteLevelBPE(Tokenizer):
    """GPT-2 style byte-level BPE with any id assignment.

    vocab: id -> bytes for every ordinary token; it must hold all 256 single bytes.
    merges: (left id, right id) pairs, lowest rank first; the bytes of each merged pair must be in vocab.
    special_tokens: text -> id, for tokens that are never split, merged or made by merges.

    Use `train` on a corpus, `from_vocab_merges` for GPT-2 / Hugging Face files, `from_dict`/`load` for a
    saved one. Tokenizers this class trains number the bytes 0..255 in byte order, then the merges in the
    order learnt, then the special tokens.
    """

    kind = "bpe"
    settings = BPEConfig

    def __init__(self, vocab: Mapping[int, bytes], merges: Sequence[tuple[int, int]],
                 special_tokens: Mapping[str, int] = {}) -> None:
        ids_of = {data: i for i, data in vocab.items()}
        if len(ids_of) != len(vocab):
            raise TokenizerError("two ids of the vocabulary have the same bytes")
        missing = [b for b in range(256) if bytes([b]) not in ids_of]
        if missing:
            raise TokenizerError(f"the vocabulary lacks {len(missing)} single byte(s), e.g. {bytes(missing[:5])!r}")
        if any(not isinstance(i, int) or i < 0 for i in [*vocab, *special_tokens.values()]):
            raise TokenizerError("token ids must be non-negative integers")
        clash = set(vocab) & set(special_tokens.values())
        if clash or len(set(special_tokens.values())) != len(special_tokens):
            raise TokenizerError(f"special tokens must have ids of their own, not {sorted(clash)[:5]}")
        if any(not s for s in special_tokens):
            raise TokenizerError("a special token cannot be empty")

        size = max([*vocab, *special_tokens.values()]) + 1
        self._token_bytes: list[Optional[bytes]] = [None] * size  # id -> bytes, what decode joins
        for i, data in vocab.items():
            self._token_bytes[i] = data
        for text, i in special_tokens.items():
            self._token_bytes[i] = text.encode("utf-8")
        self.vocab: dict[int, bytes] = dict(vocab)
        self.special_tokens: dict[str, int] = dict(special_tokens)
        self._byte_ids = [ids_of[bytes([b])] for b in range(256)]  # byte value -> id

        self.merges: list[tuple[int, int]] = []
        self._ranks: dict[tuple[int, int], int] = {}  # (left id, right id) -> rank
        self._merged: list[int] = []  # rank -> id of the merged token
        for a, b in merges:
            if a not in vocab or b not in vocab:
                raise TokenizerError(f"merge {len(self.merges)} uses an id that is not an ordinary token: {(a, b)}")
            joined = vocab[a] + vocab[b]
            if joined not in ids_of:
                raise TokenizerError(f"merge {len(self.merges)} makes {joined!r}, which is not in the vocabulary")
            if (a, b) in self._ranks:
                raise TokenizerError(f"merge {len(self.merges)} repeats merge {self._ranks[(a, b)]}: {(a, b)}")
            self._ranks[(a, b)] = len(self.merges)
            self.merges.append((a, b))
            self._merged.append(ids_of[joined])
        self._cache: dict[str, tuple[int, ...]] = {}  # chunk -> ids, filled as chunks are encoded
        self._special_regex: dict[frozenset, re.Pattern] = {}

    # -- the Tokenizer interface

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (ids of a loaded vocab.json may leave gaps)."""
        return len(self._token_bytes)

    @property
    def eot_id(self) -> Optional[int]:
        return self.special_tokens.get(EOT)

    def with_specials(self, specials: Iterable[str]) -> "ByteLevelBPE":
        new = [s for s in dict.fromkeys(specials) if s not in self.special_tokens]
        if not new:
            return self
        added = {s: self.vocab_size + k for k, s in enumerate(new)}
        return ByteLevelBPE(self.vocab, self.merges, {**self.special_tokens, **added})

    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Token ids of text.

        allowed_special says which special tokens are recognised where they appear in the text: "all",
        a collection of their strings, or one such string. The default, none, encodes "<|endoftext|>" in a text like any
        other characters (several ordinary tokens), so a document that happens to contain it cannot forge
        the token; pass allowed_special="all" where the markers are meant, e.g. documents joined by
        "<|endoftext|>". Naming a string that is not a special token of this vocabulary is an error.
        """
        regex = self._special_split(allowed_special)
        if regex is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for i, part in enumerate(regex.split(text)):
            if i % 2:  # the split keeps the matched special tokens at the odd places
                ids.append(self.special_tokens[part])
            elif part:
                ids += self._encode_ordinary(part)
        return ids

    def encode_array(self, text: str, allowed_special: AllowedSpecial = ()) -> np.ndarray:
        """`encode` for whole corpora, as a numpy array (uint16 when every id fits, else int64)."""
        dtype = np.uint16 if self.vocab_size <= MAX_VOCAB_SIZE else np.int64
        return np.array(self.encode(text, allowed_special), dtype=dtype)

    def encode_corpus(self, text: str) -> np.ndarray:
        return self.encode_array(text, allowed_special="all")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids; bytes that do not form UTF-8 (a token cut off mid-character) show as U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def encode_bytes(self, data: bytes, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Token ids of any byte string; `decode_bytes` gives it back exactly.

        Valid UTF-8 encodes as its text does. Bytes that are not UTF-8 are carried through pre-tokenization
        as the lone surrogates U+DC80..U+DCFF (Python's "surrogateescape") and encoded as those raw bytes.
        """
        return self.encode(data.decode("utf-8", errors="surrogateescape"), allowed_special)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        table = self._token_bytes
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < len(table) and table[i] is not None)]
            raise TokenizerError(f"id(s) not in the vocabulary of {self.vocab_size}: {bad[:10]}") from None

    def text_bytes(self) -> list[int]:
        specials = set(self.special_tokens.values())  # a token may end mid-character: count its bytes, not text
        return [0 if i in specials else len(self.token_bytes(i)) for i in range(self.vocab_size)]

    def token_bytes(self, i: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 text)."""
        return self.decode_bytes([i])

    # -- encoding internals

    def _special_split(self, allowed_special: AllowedSpecial) -> Optional[re.Pattern]:
        """A regex whose split keeps the allowed special tokens, or None if none is allowed."""
        if isinstance(allowed_special, str):
            allowed_special = self.special_tokens if allowed_special == "all" else [allowed_special]
        allowed = frozenset(allowed_special or ())
        if not allowed:
            return None
        unknown = allowed - self.special_tokens.keys()
        if unknown:
            raise TokenizerError(f"not special tokens of this vocabulary: {sorted(unknown)}")
        if allowed not in self._special_regex:
            longest_first = sorted(allowed, key=lambda s: (-len(s), s))  # "<|a|>x" wins over "<|a|>"
            self._special_regex[allowed] = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")
        return self._special_regex[allowed]

    def _encode_ordinary(self, text: str) -> list[int]:
        """Ids of text with no special tokens: pre-tokenize, then look each chunk up, encoding new ones."""
        ids: list[int] = []
        cache = self._cache
        for piece in text_pieces(text):
            chunks = pretokenize(piece)
            done = len(ids)
            try:
                ids += chain.from_iterable(map(cache.__getitem__, chunks))  # the fast path: all chunks known
            except KeyError:
                del ids[done:]
                if len(cache) > _CACHE_LIMIT:
                    cache.clear()
                for chunk in set(chunks).difference(cache):
                    cache[chunk] = self._encode_chunk(chunk)
                ids += chain.from_iterable(map(cache.__getitem__, chunks))
        return ids

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Apply the merges to one chunk: the lowest-ranked pair present first, all its occurrences."""
        return tuple(_merge([self._byte_ids[b] for b in _chunk_bytes(chunk)], self._ranks, self._merged))

    # -- training

    @classmethod
    def train(cls, text: str, **settings: Any) -> "ByteLevelBPE":
        """Learn merges on text until there are vocab_size tokens in all (256 bytes + merges + specials).

        settings: the fields of `BPEConfig` (its defaults apply to what is not given).
        Ids: the bytes 0..255 in byte order, then the merges in the order learnt, then special_tokens in
        the order given (so "<|endoftext|>" alone is the last id). vocab_size is at most 65,536.

        min_frequency: stop early when the most frequent pair occurs fewer times than this (so the
        vocabulary may come out smaller than asked). Ties between pairs of equal count go to the smallest
        (left id, right id), so the result depends on the text and settings only. Special tokens found in
        the text are taken out before counting: they separate documents and are never part of a merge.
        show_progress: a progress bar on a terminal (never when stderr is not one).
        """
        spec = BPEConfig(**{"kind": cls.kind, **settings})
        special_tokens = list(spec.special_tokens or ())
        if len(set(special_tokens)) != len(special_tokens):
            raise TokenizerError(f"special tokens repeat: {special_tokens}")
        n_merges = spec.vocab_size - 256 - len(special_tokens)  # BPEConfig checked that this leaves room for them
        merges = learn_merges(count_chunks(text, special_tokens), n_merges, spec.min_frequency, spec.show_progress)
        vocab = {b: bytes([b]) for b in range(256)}
        for a, b in merges:
            vocab[len(vocab)] = vocab[a] + vocab[b]
        specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
        return cls(vocab, merges, specials)

    # -- saving and loading

    def to_dict(self) -> dict:
        """Plain JSON-able form, tokens spelt as in GPT-2's files:

        {"kind": "bpe", "version": 1, "pre_tokenizer": "gpt2",
         "vocab": {"!": 0, ..., "Ġthe": 300, ...},      # ordinary tokens, in id order
         "merges": ["Ġ t", "h e", ...],                  # "left right", lowest rank first
         "special_tokens": {"<|endoftext|>": 4095}}
        """
        return {"kind": self.kind, "version": 1, "pre_tokenizer": "gpt2",
                "vocab": {token_to_str(data): i for i, data in sorted(self.vocab.items())},
                "merges": [f"{token_to_str(self.vocab[a])} {token_to_str(self.vocab[b])}" for a, b in self.merges],
                "special_tokens": dict(self.special_tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> "ByteLevelBPE":
        if d.get("version", 1) != 1 or d.get("pre_tokenizer", "gpt2") != "gpt2":
            raise TokenizerError(f"unknown bpe format: version {d.get('version')}, "
                                 f"pre_tokenizer {d.get('pre_tokenizer')}")
        return cls._from_strings(d["vocab"], d["merges"], d.get("special_tokens", {}))

    @classmethod
    def _from_strings(cls, vocab: Mapping[str, int], merges: Iterable[str],
                      special_tokens: Mapping[str, int]) -> "ByteLevelBPE":
        """Build from GPT-2 spelt tokens: vocab string -> id, merges "left right", specials text -> id."""
        ids = {token: int(i) for token, i in vocab.items() if token not in special_tokens}
        pairs = []
        for line_no, line in enumerate(merges):
            parts = line.split(" ")
            if len(parts) != 2 or parts[0] not in ids or parts[1] not in ids:
                raise TokenizerError(f"merge {line_no} is not two tokens of the vocabulary: {line!r}")
            pairs.append((ids[parts[0]], ids[parts[1]]))
        return cls({i: str_to_token(token) for token, i in ids.items()}, pairs, dict(special_tokens))

    def save(self, path: Union[str, PathLike]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Union[str, PathLike]) -> "ByteLevelBPE":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_vocab_merges(cls, vocab_json_path: Union[str, PathLike], merges_txt_path: Union[str, PathLike],
                          special_tokens: Optional[Sequence[str]] = None) -> "ByteLevelBPE":
        """Load GPT-2's file pair (as also written by Hugging Face's BPE `model.save`), keeping its ids.

        special_tokens: the strings to treat as special; each keeps its id from vocab.json, or, if absent
        there, gets the next id after the largest. None: "<|endoftext|>" if vocab.json has it, else none.
        """
        vocab = json.loads(Path(vocab_json_path).read_text(encoding="utf-8"))
        lines = Path(merges_txt_path).read_text(encoding="utf-8").split("\n")
        merges = [ln for k, ln in enumerate(lines) if ln and not (k == 0 and ln.startswith("#version"))]
        if special_tokens is None:
            special_tokens = [EOT] if EOT in vocab else []
        specials, next_id = {}, max(vocab.values(), default=-1) + 1
        for s in special_tokens:
            if s in vocab:
                specials[s] = vocab[s]
            else:
                specials[s], next_id = next_id, next_id + 1
        return cls._from_strings(vocab, merges, specials)


# --- training internals ---------------------------------------------------------------------------------


def count_chunks(text: str, special_tokens: Sequence[str] = ()) -> Counter:
    """How often each pre-tokenized chunk occurs in text (special tokens taken out first).

    Only distinct chunks are kept, so memory grows with the vocabulary of the corpus, not with its size.
    """
    counts: Counter = Counter()
    specials = "|".join(map(re.escape, sorted(special_tokens, key=len, reverse=True)))
    parts = re.split(specials, text) if special_tokens else [text]
    for part in parts:
        for piece in text_pieces(part):
            counts.update(pretokenize(piece))
    return counts


def learn_merges(chunk_counts: Mapping[str, int], n_merges: int, min_frequency: int = 2,
                 show_progress: bool = False) -> list[tuple[int, int]]:
    """Up to n_merges merges, most frequent pair first, for base ids = byte values and merge k -> 256 + k.

    The work is in keeping pair counts current without recounting: `where` indexes, for every pair, the
    words (distinct chunks) that contain it, so a merge only visits those words, and only the pairs next
    to each merged spot change. A heap finds the most frequent pair; its entries are checked when popped
    and pushed again with the current count if stale. That is enough because a pair's count only ever
    falls once it exists (new pairs always contain the newest token), so no entry underestimates.
    """
    from tqdm.auto import tqdm

    words: list[list[int]] = []  # each distinct chunk as token ids, merged as training goes
    freqs: list[int] = []  # how often each occurs in the corpus
    for chunk, count in chunk_counts.items():
        data = _chunk_bytes(chunk)
        if len(data) > 1:  # a single byte holds no pair
            words.append(list(data))
            freqs.append(count)

    counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> occurrences in the corpus
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that (may) contain it
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] += f
            where[pair].add(w)
    heap = [(-c, pair) for pair, c in counts.items()]  # max count first, then the smallest pair
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    with tqdm(total=n_merges, desc="bpe merges", unit="merge", disable=None if show_progress else True) as bar:
        while len(merges) < n_merges and heap:
            neg, pair = heapq.heappop(heap)
            count = counts.get(pair, 0)
            if count != -neg:  # stale entry: the pair has lost occurrences since it was pushed
                if count > 0:
                    heapq.heappush(heap, (-count, pair))
                continue
            if count < min_frequency:
                break
            new = 256 + len(merges)
            merges.append(pair)
            bar.update()
            born = _apply_merge(pair, new, words, freqs, counts, where)
            del counts[pair]
            for p in born:
                if counts[p] > 0:
                    heapq.heappush(heap, (-counts[p], p))
    return merges


def _apply_merge(pair, new, words, freqs, counts, where) -> set:
    """Merge pair into token new in every word holding it; update counts and where; return the new pairs.

    At each merged spot "x a b y" -> "x N y", the pairs (x, a) and (b, y) lose f occurrences and (x, N),
    (N, y) gain them, where x is the token now on the left (already N if the spot before was merged too).
    """
    a, b = pair
    born = set()
    for w in where.pop(pair):
        word, f = words[w], freqs[w]
        out: list[int] = []
        i, last = 0, len(word) - 1
        left = word.count(a)  # occurrences of a still ahead; list.count and list.index scan at C speed
        while left:
            j = word.index(a, i)
            left -= 1
            if j == last or word[j + 1] != b:
                out += word[i : j + 1]
                i = j + 1
                continue
            if a == b:
                left -= 1  # the b consumed is an a too
            out += word[i:j]
            if out:
                x = out[-1]
                counts[(x, a)] -= f
                counts[(x, new)] += f
                where[(x, new)].add(w)
                born.add((x, new))
            if j + 2 <= last:
                y = word[j + 2]
                counts[(b, y)] -= f
                counts[(new, y)] += f
                where[(new, y)].add(w)
                born.add((new, y))
            out.append(new)
            i = j + 2
        out += word[i:]
        words[w] = out
    return born
