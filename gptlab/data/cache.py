"""Tokenize a corpus once into memory-mapped token shards, cached by (corpus, tokenizer, split).

Layout of one cache entry, `<cache_dir>/<name>-<key>/`:
    plan.json            the corpus cut into units, and how the validation split is chosen (data/plan.py)
    tokenizer.json       the tokenizer, trained once on a sample of the training documents
    shards/{train,val}-NNNNN.bin   token ids of each unit, uint16 (or uint32 for vocabularies over 65,536)
    manifest.jsonl       a line for each unit whose shards are done: a stopped preparation continues there
    meta.json            tokenizer, dtype, the shards of each split, token and character counts; written
                         last, so its presence means the entry is complete
Every file is written to a temporary name and renamed into place, so a concurrent job (a multirun, DDP
ranks) sees either no file or the whole file, never half of one, and jobs building the same entry write
identical files. `key` hashes the corpus's fingerprint (file names, sizes and times, or a text's content),
the tokenizer settings and the split; nothing of the corpus is held in memory, here or in the workers.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from gptlab.data import plan as plan_mod
from gptlab.data.corpus import Corpus
from gptlab.data.plan import SPLITS, Plan
from gptlab.data.prepare import (Job, all_characters, default_num_proc, processes, run_units, shard_name,
                                 training_sample)
from gptlab.data.shards import TokenShards
from gptlab.files import atomic_write
from gptlab.tokenizers import Tokenizer, tokenizer_class, tokenizer_from_dict, train_tokenizer
from gptlab.tokenizers.bpe import EOT

CACHE_VERSION = 2  # bump when the on-disk format changes, so old entries are not misread


def cache_key(fingerprint: str, tokenizer: dict, val_fraction: float) -> str:
    """fingerprint: the corpus's (`Corpus.fingerprint`); tokenizer: its settings or a ready one's dict."""
    settings = {"v": CACHE_VERSION, "text": fingerprint, "tokenizer": tokenizer, "val_fraction": val_fraction}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def encode(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """A text in memory as token ids (uint16, or uint32 for vocabularies over 65,536)."""
    return tokenizer.encode_corpus(text).astype(_dtype(tokenizer))


def _dtype(tokenizer: Tokenizer) -> str:
    return "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"


@dataclass
class TokenFiles:
    """A complete cache entry: each split's shards as one memory-mapped array, plus what meta.json says."""

    dir: Path
    meta: dict
    tokenizer: Tokenizer
    train: TokenShards
    val: TokenShards

    @classmethod
    def open(cls, d: Path) -> "TokenFiles":
        meta = json.loads((d / "meta.json").read_text())
        splits = {s: TokenShards([d / name for name, _ in meta[s]["shards"]], meta["dtype"]) for s in SPLITS}
        return cls(dir=d, meta=meta, tokenizer=tokenizer_from_dict(meta["tokenizer"]), **splits)

    @property
    def val_tokens_per_char(self) -> float:
        return self.meta["val"]["tokens"] / self.meta["val"]["chars"]


def prepare_tokens(corpus: Union[str, Corpus], name: str, tokenizer: Union[dict, Tokenizer], val_fraction: float,
                   cache_dir: Path, log: Callable[[str], None] = print, num_proc: Optional[int] = None) -> Path:
    """Return the cache entry for this corpus and tokenizer, building it first (or finishing it) if needed.

    corpus: a Corpus (data/corpus.py), or a text in memory. tokenizer: settings (a dict with "kind") to
    train one on the training documents, or a ready Tokenizer to use as is (a checkpoint's, for
    evaluating it on other text). num_proc: processes that encode; None: one per core; 1: this one.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if isinstance(corpus, str):
        corpus = Corpus.from_text(corpus)
    given = tokenizer if isinstance(tokenizer, Tokenizer) else None
    settings = given.to_dict() if given is not None else _full_settings(tokenizer)  # type: ignore[arg-type]
    fingerprint = corpus.fingerprint()
    d = Path(cache_dir) / f"{name}-{cache_key(fingerprint, settings, val_fraction)}"
    if (d / "meta.json").is_file():
        return d
    # a resumed run's tokenizer: the entry its first start trained it in has these tokens
    if given is not None and (same := _entry_with(Path(cache_dir), name, fingerprint, settings, val_fraction)):
        return same
    plan = _plan(corpus, val_fraction, d)
    tok = given or _tokenizer(corpus, plan, settings, d)
    job = Job(corpus, plan, tok, d, _dtype(tok))
    num_proc = num_proc or default_num_proc()
    split = (f"{plan.documents:,} documents, {plan.val_documents:,} for validation" if plan.split_by == "documents"
             else f"the last {val_fraction:.0%} for validation")
    log(f"tokenizing {corpus.description} ({corpus.size / 1e6:,.1f} MB; {split}) with a {tok.kind} tokenizer of "
        f"{tok.vocab_size:,} tokens: {len(plan.units)} unit(s), {processes(plan.units, num_proc)} process(es) -> {d}")
    counts = run_units(job, num_proc)
    meta = {"version": CACHE_VERSION, "name": name, "dtype": job.dtype, "tokenizer": job.tokenizer.to_dict(),
            "val_fraction": val_fraction, "fingerprint": fingerprint, "split_by": plan.split_by,
            "documents": plan.documents}
    for split in SPLITS:
        units = [(u.index, counts[u.index][split]) for u in plan.units]
        meta[split] = {"tokens": sum(c["tokens"] for _, c in units), "chars": sum(c["chars"] for _, c in units),
                       **({"documents": sum(c["documents"] for _, c in units)} if plan.split_by == "documents" else {}),
                       "shards": [[shard_name(split, i), c["tokens"]] for i, c in units if c["tokens"]]}
    atomic_write(d / "meta.json", lambda f: f.write(json.dumps(meta, indent=1)), mode="w")
    return d


def _entry_with(cache_dir: Path, name: str, fingerprint: str, tokenizer: dict, val_fraction: float) -> Optional[Path]:
    """A finished entry of this corpus whose (trained) tokenizer is exactly `tokenizer`, if there is one."""
    for meta_file in sorted(cache_dir.glob(f"{glob.escape(name)}-*/meta.json")):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        if (meta.get("fingerprint"), meta.get("val_fraction"), meta.get("tokenizer")) == \
                (fingerprint, val_fraction, tokenizer):
            return meta_file.parent
    return None


def _full_settings(tokenizer: dict) -> dict:
    """Settings with every default filled in, so {"kind": "bpe"} and its spelt-out defaults share an entry."""
    return dataclasses.asdict(tokenizer_class(tokenizer.get("kind", "?")).settings(**tokenizer))


def _plan(corpus: Corpus, val_fraction: float, d: Path) -> Plan:
    """The entry's plan: the saved one when continuing a stopped preparation, else made (and saved)."""
    saved = d / "plan.json"
    if saved.is_file():
        return Plan.from_json(saved.read_text())
    plan = plan_mod.make_plan(corpus, val_fraction)
    atomic_write(saved, lambda f: f.write(plan.to_json()), mode="w")
    return plan


def _tokenizer(corpus: Corpus, plan: Plan, settings: dict, d: Path) -> Tokenizer:
    """The entry's tokenizer: the saved one when continuing, else trained (and saved).

    A char vocabulary comes from the whole corpus (as nanoGPT), else val characters would be unknown; a
    trained tokenizer (BPE) sees a sample of the training documents only (`train_chars` of them), so
    nothing of val leaks into it and a big corpus costs no more than its sample.
    """
    saved = d / "tokenizer.json"
    if saved.is_file():
        return tokenizer_from_dict(json.loads(saved.read_text()))
    kind = settings["kind"]
    options = {k: v for k, v in settings.items() if k != "kind"}
    job = Job(corpus, plan, None, d, "")  # type: ignore[arg-type]  # reading documents needs no tokenizer
    if kind == "char":
        text = all_characters(job)
    else:
        sep = EOT if EOT in (options.get("special_tokens") or ()) else "\n"  # the trainer drops special tokens
        text = training_sample(job, int(options.get("train_chars") or 0) or 1 << 62, sep)
    tok = train_tokenizer(kind, text, **options)
    atomic_write(saved, lambda f: f.write(json.dumps(tok.to_dict())), mode="w")
    return tok
