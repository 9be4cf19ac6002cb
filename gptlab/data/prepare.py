"""Encoding a plan's units into token shards, in this process or in worker processes, resumably.

Each unit becomes `shards/train-NNNNN.bin` and `shards/val-NNNNN.bin` (either is absent when it would be
empty), written atomically by whichever process encodes it. The main process then appends a line for the
unit to `manifest.jsonl`; a preparation that was stopped (Ctrl-C, a killed worker, a crash) skips the
units listed there when run again. (Appending keeps the cost per unit constant; a line cut short by a
crash is ignored, and its unit encoded again.)

Documents of one split are joined with the end-of-text token's text and encoded together: the special
token splits them again, so this gives exactly the ids of encoding each document on its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from gptlab.data.corpus import Corpus
from gptlab.data.formats import read_segment
from gptlab.data.plan import SPLITS, Plan, Unit
from gptlab.data.sources import DataError
from gptlab.files import atomic_write
from gptlab.tokenizers import Tokenizer

MANIFEST = "manifest.jsonl"
MIN_BYTES_PER_PROCESS = 16 << 20  # less input than this per process, and starting workers costs more than it saves

Counts = dict[str, dict[str, int]]  # split -> {"tokens", "chars", "documents"}


@dataclass
class Job:
    """Everything a worker needs, handed over once when it starts."""

    corpus: Corpus
    plan: Plan
    tokenizer: Tokenizer
    dir: Path
    dtype: str


def shard_name(split: str, unit: int) -> str:
    return f"shards/{split}-{unit:05d}.bin"


def default_num_proc() -> int:
    """The cores this process may run on (a cluster job's allocation, not the whole machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def eot_text(tokenizer: Tokenizer) -> Optional[str]:
    """The text of the end-of-text token, if the tokenizer has one that its text encodes back to."""
    eot = tokenizer.eot_id
    if eot is None:
        return None
    text = tokenizer.decode([eot])
    return text if tokenizer.encode_corpus(text).tolist() == [eot] else None


def documents(job: Job, unit: Unit) -> Iterator[tuple[str, str, bool]]:
    """(split, text, ends) of every document (or part of one) in a unit, in order."""
    for seg in unit.segments:
        for doc, text, ends in read_segment(job.corpus, seg):
            yield unit.split or job.plan.split_of(doc), text, ends


def encode_unit(job: Job, unit: Unit) -> Counts:
    """Encode one unit and write its shards; return what it holds."""
    tok, by_doc = job.tokenizer, job.plan.split_by == "documents"
    sep = eot_text(tok) if by_doc else None
    # joining texts is exact when a special token separates them, for a char tokenizer, and for the parts of
    # one text (cut where BPE has a boundary anyway); a BPE without end-of-text encodes documents one by one
    join = sep is not None or tok.kind == "char" or not by_doc
    texts: dict[str, list[str]] = {s: [] for s in SPLITS}
    ids: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    counts = {s: {"tokens": 0, "chars": 0, "documents": 0} for s in SPLITS}
    for split, text, ends in documents(job, unit):
        counts[split]["chars"] += len(text)
        counts[split]["documents"] += int(ends and by_doc)
        if not text:
            continue  # an empty document: no tokens, not even an end-of-text
        if join:
            texts[split] += [text, sep] if sep and ends else [text]
        else:
            ids[split].append(tok.encode_corpus(text))
    for split in SPLITS:
        if texts[split]:
            ids[split].append(tok.encode_corpus("".join(texts[split])))
            texts[split] = []
        arr = np.concatenate(ids[split]).astype(job.dtype) if ids[split] else np.zeros(0, job.dtype)
        counts[split]["tokens"] = int(arr.size)
        if arr.size:
            atomic_write(job.dir / shard_name(split, unit.index), arr.tofile)
    return counts


# --- running units: in this process or in a pool ----------------------------------------------------------

_job: Optional[Job] = None  # a worker's job, set once when it starts
_busy = False  # the worker is encoding a unit (and may be writing a shard)


class _Terminated(BaseException):
    pass


def _start_worker(job: Job) -> None:
    global _job
    _job = job
    # when one worker dies the pool ends the others with SIGTERM: a worker in the middle of a unit unwinds
    # through atomic_write, which removes the shard it was writing, instead of leaving a temp file behind
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame) -> None:
    if _busy:
        raise _Terminated
    os._exit(1)


def _encode_in_worker(index: int) -> tuple[int, Counts]:
    global _busy
    assert _job is not None
    _busy = True
    try:
        return index, encode_unit(_job, _job.plan.units[index])
    except _Terminated:
        os._exit(1)
    finally:
        _busy = False


def processes(units: list[Unit], num_proc: int) -> int:
    """How many processes to encode these units with: no more than there is work for."""
    return min(num_proc, len(units), max(1, sum(u.size for u in units) // MIN_BYTES_PER_PROCESS))


def run_units(job: Job, num_proc: int) -> dict[int, Counts]:
    """Encode every unit not yet done; return the counts of all units by index."""
    done = _finished_units(job)
    todo = [u for u in job.plan.units if u.index not in done]
    total = sum(u.size for u in job.plan.units)
    bar = tqdm(total=total, initial=total - sum(u.size for u in todo), unit="B", unit_scale=True,
               desc="tokenizing", disable=None, dynamic_ncols=True)  # to stderr, on a terminal only

    def finished(index: int, counts: Counts) -> None:
        done[index] = counts
        with open(job.dir / MANIFEST, "a") as f:
            f.write(json.dumps({"unit": index, **counts}) + "\n")
            f.flush()
            os.fsync(f.fileno())  # recorded only once its shards are on disk
        bar.update(job.plan.units[index].size)

    procs = processes(todo, num_proc)
    with bar:
        if procs <= 1:
            for u in todo:
                finished(u.index, encode_unit(job, u))
        else:
            _run_pool(job, todo, procs, finished)
    return done


def _run_pool(job: Job, todo: list[Unit], procs: int, finished) -> None:
    # fork starts a worker in milliseconds with the job already in memory; where there is none, spawn
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(procs, mp_context=ctx, initializer=_start_worker, initargs=(job,))
    try:
        for future in as_completed([pool.submit(_encode_in_worker, u.index) for u in todo]):
            finished(*future.result())
    except BrokenProcessPool:
        raise DataError(f"a process tokenizing into {job.dir} died (killed, or out of memory? try a smaller "
                        "data.num_proc); run again to continue where it stopped") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _finished_units(job: Job) -> dict[int, Counts]:
    """Units the manifest lists whose shards are all there, whole."""
    try:
        lines = (job.dir / MANIFEST).read_text().splitlines()
    except OSError:
        return {}
    itemsize = np.dtype(job.dtype).itemsize
    done = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # cut short by a crash
        index, counts = record["unit"], {s: record[s] for s in SPLITS}
        files = [(job.dir / shard_name(s, index), counts[s]["tokens"] * itemsize) for s in SPLITS]
        if all((p.stat().st_size == n if p.is_file() else n == 0) for p, n in files):
            done[index] = counts
    return done


# --- reading what the tokenizer is trained on -----------------------------------------------------------


def training_sample(job: Job, limit: int, sep: str) -> str:
    """Up to `limit` characters of training documents, joined by sep, from units spread over the corpus:
    every k-th unit first (k chosen so that they hold about enough), then the others in order."""
    units = job.plan.units
    train_bytes = sum(u.size for u in units if u.split != "val")
    step = max(1, train_bytes // max(limit, 1))
    order = units[::step] + [u for k, u in enumerate(units) if k % step]
    parts: list[str] = []
    n = 0
    for unit in order:
        for split, text, ends in documents(job, unit):
            if split != "train" or not text:
                continue
            take = text[: limit - n]
            parts.append(take)
            n += len(take)
            if n >= limit:
                return "".join(parts)
            if ends:
                parts.append(sep)
    return "".join(parts)


def all_characters(job: Job) -> str:
    """Every distinct character of the corpus, both splits (a char vocabulary must cover validation too)."""
    seen = np.zeros(0x110000, dtype=bool)  # one flag per code point: several times faster than a set
    for unit in job.plan.units:
        for _, text, _ in documents(job, unit):
            seen[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)] = True
    return "".join(map(chr, np.flatnonzero(seen)))
