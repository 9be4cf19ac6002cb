"""What to tokenize: the inputs behind `data.path` (a file, a folder, `hf:NAME`) or a text in memory.

A `Corpus` only lists its inputs; nothing here reads a document. Its `fingerprint` names the content for
the token cache without reading it: each file's path, size and modification time (a string in memory is
hashed in slices; a Hugging Face data set gives its own fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from gptlab.data.sources import DataError

# what a folder's files are read as, by suffix; a single file given by path is text whatever its suffix
SUFFIXES = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".parquet": "parquet"}
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class Input:
    """One source of documents: a file (text: one document; jsonl, parquet: one per record), a text in
    memory, or a Hugging Face data set."""

    kind: str  # "text", "jsonl", "parquet", "string" or "hf"
    path: str  # the file; the data set's name or folder for "hf"; "" for "string"
    size: int  # bytes (characters for "string", an estimate for "hf"): what the progress bar counts
    mtime_ns: int = 0


@dataclass
class Corpus:
    inputs: list[Input]
    text_field: str = "text"  # the record field holding the text (jsonl, parquet, hf)
    description: str = ""
    text: Optional[str] = field(default=None, repr=False)  # the "string" input's text
    hf: Optional[dict] = None  # {"name", "config", "split"} of a Hugging Face data set
    _dataset: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_text(cls, text: str) -> "Corpus":
        return cls([Input("string", "", len(text))], description=f"a text of {len(text):,} characters", text=text)

    @classmethod
    def from_path(cls, path: Path, text_field: str = "text") -> "Corpus":
        path = Path(path).expanduser()
        if path.is_file():
            kind = SUFFIXES.get(path.suffix.lower(), "text")
            return cls([_input(kind, path)], text_field, description=str(path))
        if not path.exists():
            raise DataError(f"data file {path} does not exist: check data.path "
                            f"(relative paths start from {Path.cwd()})")
        inputs = [_input(SUFFIXES[p.suffix.lower()], p) for p in _files_below(path)]
        inputs = [i for i in inputs if i.size > 0]  # an empty file holds no document
        if not inputs:
            raise DataError(f"folder {path} has no .txt, .md, .jsonl or .parquet files with anything in them: "
                            "point data.path at a text file or a folder of such files")
        return cls(inputs, text_field, description=f"{path} ({len(inputs):,} files)" if len(inputs) > 1 else str(path))

    @classmethod
    def from_hf(cls, name: str, config: Optional[str], split: str, text_field: str = "text") -> "Corpus":
        corpus = cls([], text_field, description=f"{HF_PREFIX}{name} ({split})",
                     hf={"name": name, "config": config, "split": split})
        ds = corpus.dataset()
        if text_field not in ds.column_names:
            raise DataError(f"Hugging Face data set {name} has no {text_field!r} column (it has: "
                            f"{', '.join(ds.column_names)}): set data.text_field")
        size = int(getattr(ds.data, "nbytes", 0)) or len(ds)
        corpus.inputs = [Input("hf", name, size)]
        return corpus

    @property
    def one_document(self) -> bool:
        """A single text is split by position (its last characters are the validation split), as nanoGPT."""
        return len(self.inputs) == 1 and self.inputs[0].kind in ("text", "string")

    @property
    def size(self) -> int:
        return sum(i.size for i in self.inputs)

    def fingerprint(self) -> str:
        """A hash that changes when the content does, computed without reading the corpus into memory."""
        h = hashlib.sha256()
        if self.text is not None:
            for i in range(0, len(self.text), 1 << 20):  # slices: never a second whole copy as bytes
                h.update(self.text[i : i + (1 << 20)].encode("utf-8", "surrogatepass"))
        elif self.hf is not None:
            ds = self.dataset()
            h.update(json.dumps([self.hf, getattr(ds, "_fingerprint", None), len(ds)], sort_keys=True).encode())
        for i in self.inputs:
            h.update(json.dumps([i.kind, i.path, i.size, i.mtime_ns]).encode())
        if any(i.kind in ("jsonl", "parquet", "hf") for i in self.inputs):
            h.update(self.text_field.encode())
        return h.hexdigest()

    def dataset(self):
        """The Hugging Face data set, loaded on first use (in each process that reads it)."""
        if self._dataset is None:
            assert self.hf is not None
            ds = load_hf(**self.hf)
            self._dataset = ds if ds.format["type"] is None else ds.with_format(None)  # rows as Python lists
        return self._dataset

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}  # a worker loads the data set again (memory-mapped, cheap)


def _input(kind: str, path: Path) -> Input:
    st = path.stat()
    return Input(kind, str(path.resolve()), st.st_size, st.st_mtime_ns)


def _files_below(root: Path) -> list[Path]:
    """Files of the known suffixes below root, in a fixed order; hidden files and folders are skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith(".") and Path(f).suffix.lower() in SUFFIXES:
                found.append(Path(folder) / f)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def load_hf(name: str, config: Optional[str], split: str):
    """A split of a Hugging Face data set: a folder saved with `save_to_disk`, a local data folder, or a
    name on the Hub (downloaded once into Hugging Face's cache)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"data.path={HF_PREFIX}{name} needs the `datasets` package: pip install -e \".[data]\"") from None
    local = Path(name).expanduser()
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{local} has no split {split!r} (it has: {', '.join(ds)}): set data.hf_split")
                ds = ds[split]
            return ds
        return datasets.load_dataset(str(local) if local.exists() else name, config, split=split)
    except DataError:
        raise
    except Exception as e:  # offline, unknown name, missing config: whatever `datasets` says, on one line
        reason = re.sub(r"\s+", " ", str(e)).strip()[:300]
        raise DataError(f"could not load the Hugging Face data set {name!r} ({type(e).__name__}: {reason}); "
                        "offline, it must be in the Hugging Face cache already, or give a local folder") from None
