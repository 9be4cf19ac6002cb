"""Reading documents back from pieces of the inputs, format by format, and cutting inputs into such pieces.

A `Segment` is a piece of one input that a worker reads on its own: a byte range of a text or .jsonl file,
row groups of a .parquet file, rows of a Hugging Face data set, characters of a text in memory. Reading
a segment yields its documents as (index, text, ends): the document's index in the whole corpus (which
decides its split), its text (a text file cut into several segments gives one part per segment), and
whether the document ends there (where the end-of-text token goes).

Text is cut only at "safe" places: just after a printable ASCII character that a space or newline
follows. BPE pre-tokenization always has a boundary there, so the parts encode exactly as the whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gptlab.data.corpus import Corpus, Input
from gptlab.data.sources import DataError, decode

SAFE_CUT = re.compile(r"[\x21-\x7e](?=[\n ])")
SAFE_CUT_BYTES = re.compile(rb"[\x21-\x7e](?=[\n ])")
READ_BYTES = 1 << 20  # how much a scan of a file reads at once
BOM = "\ufeff"


@dataclass(frozen=True)
class Segment:
    input: int  # index in corpus.inputs
    start: int  # bytes (text, jsonl), row groups (parquet), rows (hf), characters (string)
    stop: int
    first_doc: int  # index in the corpus of the first document read from here
    size: int  # bytes (or characters), for the progress bar
    line: int = 1  # jsonl: the line number at start, for error messages


Document = tuple[int, str, bool]


# --- reading -------------------------------------------------------------------------------------------


def read_segment(corpus: Corpus, seg: Segment) -> Iterator[Document]:
    inp, text_field = corpus.inputs[seg.input], corpus.text_field
    if inp.kind == "string":
        assert corpus.text is not None
        yield seg.first_doc, corpus.text[seg.start : seg.stop], seg.stop == len(corpus.text)
    elif inp.kind == "text":
        yield seg.first_doc, _read_text(inp, seg), seg.stop == inp.size
    elif inp.kind == "jsonl":
        yield from _read_jsonl(inp, seg, text_field)
    elif inp.kind == "parquet":
        yield from _read_parquet(inp, seg, text_field)
    elif inp.kind == "hf":
        rows = corpus.dataset()[seg.start : seg.stop][text_field]
        for k, text in enumerate(rows):
            yield seg.first_doc + k, _checked(text, f"{corpus.description}, row {seg.start + k}", text_field), True
    else:
        raise ValueError(f"unknown input kind {inp.kind!r}")


def _read_bytes(path: str, start: int, stop: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(stop - start)


def _read_text(inp: Input, seg: Segment) -> str:
    text = decode(_read_bytes(inp.path, seg.start, seg.stop), inp.path, seg.start)
    return text[1:] if seg.start == 0 and text.startswith(BOM) else text  # a byte-order mark is no text


def _read_jsonl(inp: Input, seg: Segment, text_field: str) -> Iterator[Document]:
    doc = seg.first_doc
    lines = _read_bytes(inp.path, seg.start, seg.stop).split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the segment ends with a newline
    for k, line in enumerate(lines):
        if not line.strip():
            continue  # blank lines are not records
        where = f"{inp.path}, line {seg.line + k}"
        try:
            record = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where}: not a JSON object ({e}); each line of a .jsonl file is one document") from None
        if not isinstance(record, dict) or text_field not in record:
            keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{where}: no {text_field!r} field (it has: {keys}); set data.text_field to the "
                            "field holding the text")
        yield doc, _checked(record[text_field], where, text_field), True
        doc += 1


def _read_parquet(inp: Input, seg: Segment, text_field: str) -> Iterator[Document]:
    f = _open_parquet(inp.path)
    doc = seg.first_doc
    batches = f.iter_batches(batch_size=4096, row_groups=range(seg.start, seg.stop), columns=[text_field])
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, ValueError) as e:  # pyarrow's errors derive from these
            raise _damaged(inp.path, e) from None
        for text in batch.column(0).to_pylist():
            yield doc, _checked(text, f"{inp.path}, row {doc - seg.first_doc} of row groups {seg.start}-"
                                      f"{seg.stop - 1}", text_field), True
            doc += 1


def _open_parquet(path: Path):
    """A pyarrow ParquetFile; a damaged or truncated file is one line naming it, not pyarrow's traceback."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading .parquet files needs pyarrow: pip install -e \".[data]\"") from None
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as e:
        raise _damaged(path, e) from None


def _damaged(path: Path, e: Exception) -> DataError:
    reason = " ".join(str(e).split())[:200]
    return DataError(f"{path} is not a readable .parquet file ({reason}): replace it, or move it out of the corpus")


def _checked(text: object, where: str, text_field: str) -> str:
    if not isinstance(text, str):
        raise DataError(f"{where}: {text_field!r} is {type(text).__name__}, not text")
    return text


# --- cutting inputs into segments --------------------------------------------------------------------


def count_documents_and_cut(corpus: Corpus, i: int, first_doc: int, unit: int) -> tuple[list[Segment], int]:
    """Segments of about `unit` bytes of input i (a whole-file document: one per unit of its size), and
    how many documents it holds. Used when the corpus is cut by documents."""
    inp = corpus.inputs[i]
    if inp.kind == "text":
        return [Segment(i, a, b, first_doc, b - a) for a, b in text_pieces(inp, 0, inp.size, unit)], 1
    if inp.kind == "jsonl":
        return _jsonl_segments(inp, i, first_doc, unit)
    if inp.kind == "parquet":
        return _parquet_segments(corpus, inp, i, first_doc, unit)
    assert inp.kind == "hf", inp.kind  # a text in memory is one document, never cut by documents
    n = len(corpus.dataset())
    rows = max(1, unit * n // max(inp.size, 1))  # rows of about `unit` bytes, by the data set's average
    return [Segment(i, a, min(a + rows, n), first_doc + a, (min(a + rows, n) - a) * inp.size // n)
            for a in range(0, n, rows)], n


def text_pieces(inp: Input, start: int, stop: int, unit: int, text: str | None = None) -> list[tuple[int, int]]:
    """[start, stop) cut at safe places into pieces of about unit bytes (characters for a string)."""
    out = []
    while stop - start > unit:
        cut = _next_safe_cut(inp, start + unit, stop, text)
        if cut is None:
            break  # no safe place left: the rest is one piece
        out.append((start, cut))
        start = cut
    if stop > start:
        out.append((start, stop))
    return out


def _next_safe_cut(inp: Input, pos: int, stop: int, text: str | None) -> int | None:
    if text is not None:
        m = SAFE_CUT.search(text, pos, stop)
        return m.end() if m else None
    with open(inp.path, "rb") as f:
        while pos < stop:
            f.seek(pos)
            data = f.read(min(READ_BYTES, stop - pos))
            m = SAFE_CUT_BYTES.search(data)
            if m:
                return pos + m.end()
            pos += max(len(data) - 1, 1)  # keep the last byte: it may be the printable half of a cut
    return None


def _jsonl_segments(inp: Input, i: int, first_doc: int, unit: int) -> tuple[list[Segment], int]:
    """Cut at line starts; count the documents (non-blank lines) before each cut."""
    segments, docs, offset, line_no = [], 0, 0, 0
    start, start_doc, start_line = 0, 0, 1
    with open(inp.path, "rb") as f:
        for line in f:
            line_no += 1
            offset += len(line)
            if line.strip():
                docs += 1
            if offset - start >= unit:
                segments.append(Segment(i, start, offset, first_doc + start_doc, offset - start, start_line))
                start, start_doc, start_line = offset, docs, line_no + 1
    if offset > start:
        segments.append(Segment(i, start, offset, first_doc + start_doc, offset - start, start_line))
    return segments, docs


def _parquet_segments(corpus: Corpus, inp: Input, i: int, first_doc: int, unit: int) -> tuple[list[Segment], int]:
    """Whole row groups, several small ones together; row counts come from the file's metadata."""
    f = _open_parquet(inp.path)
    names = f.schema_arrow.names
    if corpus.text_field not in names:
        raise DataError(f"{inp.path} has no {corpus.text_field!r} column (it has: {', '.join(names)}): "
                        "set data.text_field")
    meta = f.metadata
    segments, docs, start, start_doc, size = [], 0, 0, 0, 0
    for g in range(meta.num_row_groups):
        docs += meta.row_group(g).num_rows
        size += meta.row_group(g).total_byte_size
        if size >= unit or g == meta.num_row_groups - 1:
            segments.append(Segment(i, start, g + 1, first_doc + start_doc, size))
            start, start_doc, size = g + 1, docs, 0
    return segments, docs


def scan_text(path: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """(byte offset, text) of a UTF-8 file read in pieces cut at character boundaries; checks the encoding."""
    with open(path, "rb") as f:
        f.seek(start)
        carry, offset = b"", start
        while True:
            chunk = f.read(READ_BYTES)
            data = carry + chunk
            if not data:
                return
            end = _last_char_start(data) if chunk else len(data)  # more may follow: hold back a last character
            carry = data[end:]
            if end:
                yield offset, decode(data[:end], path, offset)
            offset += end


def _last_char_start(data: bytes) -> int:
    """Where the last character of data starts (it may be incomplete); data[:k] ends on a whole character."""
    k = len(data) - 1
    while k > 0 and len(data) - k < 4 and 0x80 <= data[k] < 0xC0:
        k -= 1
    return k
