"""Tokenize a corpus once into memory-mapped token files, cached by a hash of (text, tokenizer, split).

Layout of one cache entry, `<cache_dir>/<name>-<key>/`:
    train.bin, val.bin   token ids, uint16 (or uint32 for vocabularies over 65,536)
    meta.json            tokenizer, dtype, token and character counts; written last, so its presence
                         means the entry is complete
Every file is written to a temporary name and renamed into place, so a concurrent job (a multirun, DDP
ranks) sees either no file or the whole file, never half of one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np

from gptlab.files import atomic_write
from gptlab.tokenizers import Tokenizer, tokenizer_from_dict, train_tokenizer

CACHE_VERSION = 1  # bump when the on-disk format changes, so old entries are not misread


def cache_key(text: str, tokenizer: dict, val_fraction: float) -> str:
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    settings = json.dumps(
        {"v": CACHE_VERSION, "text": text_hash, "tokenizer": tokenizer, "val_fraction": val_fraction}, sort_keys=True
    )
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """First (1 - val_fraction) of the characters for training, the rest for validation (as nanoGPT)."""
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


def encode(tokenizer: Tokenizer, text: str) -> np.ndarray:
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    return tokenizer.encode_corpus(text).astype(dtype)


@dataclass
class TokenFiles:
    """A complete cache entry: memory-mapped splits plus what meta.json says of them."""

    dir: Path
    meta: dict
    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray

    @classmethod
    def open(cls, d: Path) -> "TokenFiles":
        meta = json.loads((d / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        return cls(
            dir=d,
            meta=meta,
            tokenizer=tokenizer_from_dict(meta["tokenizer"]),
            train=np.memmap(d / "train.bin", dtype=dtype, mode="r"),
            val=np.memmap(d / "val.bin", dtype=dtype, mode="r"),
        )

    @property
    def val_tokens_per_char(self) -> float:
        return self.meta["val"]["tokens"] / self.meta["val"]["chars"]


def prepare_tokens(
    text: str,
    name: str,
    tokenizer: Union[dict, Tokenizer],
    val_fraction: float,
    cache_dir: Path,
    log: Callable[[str], None] = print,
) -> Path:
    """Return the cache entry for this text and tokenizer, building it first if needed.

    tokenizer: settings (a dict with "kind") to train one on this text, or a ready Tokenizer to use as is
    (a checkpoint's, for evaluating it on other text).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    given = tokenizer if isinstance(tokenizer, Tokenizer) else None
    key_of_tokenizer = given.to_dict() if given is not None else tokenizer
    d = Path(cache_dir) / f"{name}-{cache_key(text, key_of_tokenizer, val_fraction)}"  # type: ignore[arg-type]
    if (d / "meta.json").is_file():
        return d
    train_text, val_text = split_text(text, val_fraction)
    if given is not None:
        tok = given
    else:
        assert isinstance(tokenizer, dict)
        settings = {k: v for k, v in tokenizer.items() if k != "kind"}
        # a char vocabulary comes from the whole corpus (as nanoGPT), else val characters would be unknown;
        # a trained tokenizer (BPE) sees the training split only, so nothing of val leaks into it
        tok = train_tokenizer(tokenizer["kind"], text if tokenizer["kind"] == "char" else train_text, **settings)
    log(f"tokenizing {len(text):,} characters with a {tok.kind} tokenizer of {tok.vocab_size:,} tokens into {d}")
    splits = {"train": encode(tok, train_text), "val": encode(tok, val_text)}
    for split, ids in splits.items():
        atomic_write(d / f"{split}.bin", ids.tofile)
    meta = {
        "version": CACHE_VERSION,
        "name": name,
        "dtype": splits["train"].dtype.name,
        "tokenizer": tok.to_dict(),
        "val_fraction": val_fraction,
        "train": {"tokens": int(splits["train"].size), "chars": len(train_text)},
        "val": {"tokens": int(splits["val"].size), "chars": len(val_text)},
    }
    atomic_write(d / "meta.json", lambda f: f.write(json.dumps(meta, indent=1)), mode="w")
    return d
