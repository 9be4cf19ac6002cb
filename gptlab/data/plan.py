"""The work list of a preparation: the corpus cut into units of a few MB, and which split each document is in.

How the validation split is chosen (deterministic, from the corpus alone):
- one text (a file, or a text in memory): by position, the last val_fraction of its characters, as
  nanoGPT does for Tiny Shakespeare;
- several documents (files of a folder, records of .jsonl/.parquet/a data set): whole documents, every
  (1/val_fraction)-th counting back from the last one (for 0.1: the last, the 11th from last, ...), so
  validation samples the whole corpus and always holds at least one document.

A unit is what one worker encodes into one pair of shards. Units do not depend on the number of
processes, so every num_proc gives the same files.
"""

from __future__ import annotations

import functools
import json
from dataclasses import astuple, dataclass
from fractions import Fraction
from typing import Optional

from gptlab.data.corpus import Corpus
from gptlab.data.formats import BOM, Segment, count_documents_and_cut, scan_text, text_pieces
from gptlab.data.sources import DataError

UNIT_BYTES = 8 << 20  # input per unit: big enough that a worker's start-up is noise, small enough to balance
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Unit:
    index: int
    segments: tuple[Segment, ...]
    split: Optional[str]  # "train" or "val" for a piece of one text cut by position; None: by document

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)


@dataclass
class Plan:
    split_by: str  # "position" or "documents"
    documents: int
    val_fraction: float
    units: list[Unit]

    def split_of(self, doc: int) -> str:
        """Every (1/val_fraction)-th document counting back from the last: doc is in val when
        ceil((j + 1) * f) > ceil(j * f) for j documents after it (exact integers, no float drift)."""
        j = self.documents - 1 - doc
        return "val" if self._ceil_times(j + 1) > self._ceil_times(j) else "train"

    @property
    def val_documents(self) -> int:
        return self._ceil_times(self.documents)

    def _ceil_times(self, n: int) -> int:
        """ceil(n * val_fraction), val_fraction taken as the ratio it stands for (0.1 is 1/10)."""
        p, q = self._ratio
        return -(-n * p // q)

    @functools.cached_property
    def _ratio(self) -> tuple[int, int]:
        f = Fraction(self.val_fraction).limit_denominator(1_000_000)
        return f.numerator, f.denominator

    def to_json(self) -> str:
        units = [[u.split, [list(astuple(s)) for s in u.segments]] for u in self.units]
        return json.dumps({"split_by": self.split_by, "documents": self.documents,
                           "val_fraction": self.val_fraction, "units": units})

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        d = json.loads(text)
        units = [Unit(k, tuple(Segment(*s) for s in segs), split) for k, (split, segs) in enumerate(d["units"])]
        return cls(d["split_by"], d["documents"], d["val_fraction"], units)


def make_plan(corpus: Corpus, val_fraction: float, unit_bytes: Optional[int] = None) -> Plan:
    unit_bytes = unit_bytes or UNIT_BYTES
    if corpus.one_document:
        return _by_position(corpus, val_fraction, unit_bytes)
    segments, docs = [], 0
    for i in range(len(corpus.inputs)):
        segs, n = count_documents_and_cut(corpus, i, docs, unit_bytes)
        segments += segs
        docs += n
    if docs == 0:
        raise DataError(f"{corpus.description} holds no documents: give it some text to train on")
    units, group, size = [], [], 0
    for seg in segments:  # small files (or row groups) share a unit, so a folder of many gives few shards
        group.append(seg)
        size += seg.size
        if size >= unit_bytes:
            units.append(Unit(len(units), tuple(group), None))
            group, size = [], 0
    if group:
        units.append(Unit(len(units), tuple(group), None))
    return Plan("documents", docs, val_fraction, units)


def _by_position(corpus: Corpus, val_fraction: float, unit_bytes: int) -> Plan:
    """One text: training gets its first (1 - val_fraction) of the characters, validation the rest."""
    inp = corpus.inputs[0]
    if corpus.text is not None:
        start, stop, n = 0, len(corpus.text), len(corpus.text)
        cut = int(n * (1.0 - val_fraction))
    else:
        start, n, blank = _text_start(inp.path), 0, True
        marks = []  # (byte offset, characters before it) of each piece read
        for offset, text in scan_text(inp.path, start):  # count characters (and check the encoding)
            marks.append((offset, n))
            n += len(text)
            blank = blank and not text.strip()
        if blank:
            raise DataError(f"{inp.path} is empty: give it some text to train on")
        stop, cut_char = inp.size, int(n * (1.0 - val_fraction))
        offset, before = max((m for m in marks if m[1] <= cut_char), default=(start, 0))
        cut = _byte_of_char(inp.path, offset, cut_char - before, stop)  # reads one piece, not the file again
    units = []
    for split, (a, b) in (("train", (start, cut)), ("val", (cut, stop))):
        for p, q in text_pieces(inp, a, b, unit_bytes, corpus.text):
            units.append(Unit(len(units), (Segment(0, p, q, 0, q - p),), split))
    return Plan("position", 1, val_fraction, units)


def _text_start(path: str) -> int:
    with open(path, "rb") as f:
        return len(BOM.encode()) if f.read(3) == BOM.encode() else 0


def _byte_of_char(path: str, start: int, chars: int, stop: int) -> int:
    """The byte offset of the character with index `chars` (counted from start)."""
    seen = 0
    for offset, text in scan_text(path, start):
        if seen + len(text) >= chars:
            return offset + len(text[: chars - seen].encode("utf-8"))
        seen += len(text)
    return stop
