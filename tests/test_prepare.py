"""Preparing a real corpus: folders of mixed formats, documents and end-of-text, the document-level split,
parallel workers, resuming, the cache key, bad input, and windows over several shards."""

import json
import multiprocessing as mp
import os
import pickle
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab.data import Corpus, DataConfig, DataError, FixedWindows, RandomWindows, TextDataModule, TokenFiles, \
    TokenShards, prepare_tokens
from gptlab.data import cache as cache_mod
from gptlab.data import plan as plan_mod
from gptlab.data import prepare as prepare_mod
from gptlab.tokenizers.bpe import EOT

CHAR = {"kind": "char"}
BPE = {"kind": "bpe", "vocab_size": 300, "show_progress": False}
QUIET = dict(log=lambda s: None)
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
         "you were her she there been one all we their has would when if so no will more can about said what").split()


def prepare(path_or_corpus, cache: Path, tokenizer=BPE, val_fraction=0.1, **kw) -> TokenFiles:
    corpus = path_or_corpus if isinstance(path_or_corpus, Corpus) else Corpus.from_path(Path(path_or_corpus))
    return TokenFiles.open(prepare_tokens(corpus, "t", tokenizer, val_fraction, cache, **QUIET, **kw))


def documents_of(files: TokenFiles, split: str) -> list[str]:
    """A BPE split's documents: its text cut at each end-of-text (which ends every document)."""
    text = files.tokenizer.decode(getattr(files, split)[:].tolist())
    assert text.endswith(EOT)
    return text[: -len(EOT)].split(EOT)


def mixed_folder(root: Path) -> list[str]:
    """A folder of .txt, .md and .jsonl below one another (plus files that are not read); its documents in order."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a.txt").write_text("The first document.\n")
    (root / "sub" / "b.md").write_text("# A heading\n\nThe second document, in markdown.\n")
    records = [{"text": "third, from a record"}, {"text": "fourth", "id": 4}, {"text": "fifth one"}]
    (root / "sub" / "deeper" / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n\n" +
                                                     json.dumps(records[2]) + "\n")
    (root / "notes.csv").write_text("not,read\n")
    (root / ".hidden" / "secret.txt").write_text("not read either")
    (root / "empty.txt").write_text("")
    markdown = "# A heading\n\nThe second document, in markdown.\n"
    return ["The first document.\n", *[r["text"] for r in records], markdown]


def test_folder_of_mixed_formats_is_read_recursively_with_eot_between_documents(tmp_path):
    expected = mixed_folder(tmp_path / "data")  # a.txt, then sub/b.md, sub/deeper/c.jsonl: sorted by path
    order = [expected[0], expected[4], *expected[1:4]]
    files = prepare(tmp_path / "data", tmp_path / "cache", val_fraction=0.2)
    assert files.meta["split_by"] == "documents" and files.meta["documents"] == 5
    # 0.2 of 5 documents: the last one is for validation
    assert documents_of(files, "train") == order[:4] and documents_of(files, "val") == order[4:]
    assert files.meta["train"]["documents"] == 4 and files.meta["val"]["documents"] == 1
    assert files.meta["train"]["chars"] == sum(map(len, order[:4]))


def test_char_tokenizer_puts_nothing_between_documents(tmp_path):
    mixed_folder(tmp_path / "data")
    files = prepare(tmp_path / "data", tmp_path / "cache", CHAR, val_fraction=0.2)
    text = files.tokenizer.decode(files.train[:].tolist())
    assert text == "The first document.\n# A heading\n\nThe second document, in markdown.\nthird, from a recordfourth"
    assert len(files.train) == files.meta["train"]["chars"]


def test_a_literal_eot_in_a_document_and_a_bpe_without_eot(tmp_path):
    (tmp_path / "d").mkdir()
    for k in range(4):
        (tmp_path / "d" / f"{k}.txt").write_text(f"doc {k} ends" + (" <|endoftext|> inside" if k == 1 else ""))
    no_eot = {**BPE, "special_tokens": []}
    files = prepare(tmp_path / "d", tmp_path / "cache", no_eot, val_fraction=0.25)
    assert files.tokenizer.eot_id is None
    assert files.tokenizer.decode(files.train[:].tolist()) == "doc 0 endsdoc 1 ends <|endoftext|> insidedoc 2 ends"
    # each document is encoded on its own: no token spans "ends" + "doc"
    alone = [files.tokenizer.encode_corpus(f"doc {k} ends" + (" <|endoftext|> inside" if k == 1 else "")).tolist()
             for k in range(3)]
    assert files.train[:].tolist() == sum(alone, [])


def test_validation_takes_every_nth_document_counting_back_from_the_last(tmp_path):
    docs = [f"document number {k}: " + " ".join(WORDS[k % 7 :]) for k in range(25)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    files = prepare(Corpus.from_path(tmp_path / "docs.jsonl", text_field="body"), tmp_path / "cache")
    assert documents_of(files, "val") == [docs[4], docs[14], docs[24]]  # ceil(2.5) documents, 10 apart
    assert documents_of(files, "train") == [d for k, d in enumerate(docs) if k not in (4, 14, 24)]


def test_split_rule_gives_the_fraction():
    for n, fraction, val in [(1000, 0.1, 100), (7, 0.5, 4), (3, 0.1, 1), (1000, 0.15, 150), (10, 0.3, 3)]:
        p = plan_mod.Plan("documents", n, fraction, [])
        picked = [k for k in range(n) if p.split_of(k) == "val"]
        assert len(picked) == val == p.val_documents and picked[-1] == n - 1


def test_one_file_is_split_by_characters_as_a_text_in_memory(tmp_path):
    text = "".join(f"Line {k}: {' '.join(WORDS[k % 5 : k % 5 + 9])} ünïcödé ✓\n" for k in range(3000))
    (tmp_path / "one.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())  # with a byte-order mark
    from_file = prepare(tmp_path / "one.txt", tmp_path / "c1", CHAR)
    in_memory = prepare(Corpus.from_text(text), tmp_path / "c2", CHAR)
    cut = int(len(text) * 0.9)
    assert from_file.meta["split_by"] == "position" and from_file.meta["train"]["chars"] == cut
    for split in ("train", "val"):
        assert getattr(from_file, split)[:].tolist() == getattr(in_memory, split)[:].tolist()
    assert from_file.tokenizer.decode(from_file.val[:].tolist()) == text[cut:]


def corpus_of(root: Path, n_docs: int = 2000, seed: int = 0) -> Path:
    """About 0.8 MB: a .jsonl of many documents, a long single .txt, and a folder of small .md files."""
    rng = random.Random(seed)
    root.mkdir()
    (root / "many.jsonl").write_text("".join(
        json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(5, 150))) + rng.choice([".", "!\n", "ü é"])})
        + "\n" for _ in range(n_docs)))
    (root / "long.txt").write_text("\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(6000)))
    (root / "notes").mkdir()
    for k in range(30):
        (root / "notes" / f"{k:02d}.md").write_text(f"# Note {k}\n" + " ".join(rng.choices(WORDS, k=40)))
    return root


@pytest.fixture
def small_units(monkeypatch):
    """Units of 48 kB and workers for any amount of work, so a small corpus runs as ~15 units in parallel."""
    monkeypatch.setattr(plan_mod, "UNIT_BYTES", 48 << 10)
    monkeypatch.setattr(prepare_mod, "MIN_BYTES_PER_PROCESS", 1)


def done_units(entry: Path) -> list[int]:
    manifest = entry / "manifest.jsonl"
    return [json.loads(line)["unit"] for line in manifest.read_text().splitlines()] if manifest.exists() else []


def shard_bytes(files: TokenFiles) -> dict[str, bytes]:
    """The shard files (not the hidden temp file a writer killed mid-write may leave)."""
    return {p.name: p.read_bytes() for p in sorted((files.dir / "shards").glob("[!.]*"))}


def test_parallel_workers_write_the_same_shards(tmp_path, small_units):
    root = corpus_of(tmp_path / "data")
    one = prepare(root, tmp_path / "c1", num_proc=1)
    two = prepare(root, tmp_path / "c2", num_proc=2)
    assert len(one.meta["train"]["shards"]) > 10
    assert shard_bytes(one) == shard_bytes(two)
    assert one.meta == two.meta
    # units do not change the token stream: one big unit gives the same tokens
    long_one = prepare(root / "long.txt", tmp_path / "c4", num_proc=2)  # one text, split by position, in ~8 units
    assert long_one.meta["split_by"] == "position" and len(long_one.meta["train"]["shards"]) > 5
    plan_mod.UNIT_BYTES = 1 << 30
    whole = prepare(root, tmp_path / "c3", num_proc=1)
    long_whole = prepare(root / "long.txt", tmp_path / "c5", num_proc=1)
    assert len(whole.meta["train"]["shards"]) == len(long_whole.meta["train"]["shards"]) == 1
    for split in ("train", "val"):
        assert np.array_equal(getattr(whole, split)[:], getattr(one, split)[:])
        assert np.array_equal(getattr(long_whole, split)[:], getattr(long_one, split)[:])


def test_a_stopped_preparation_continues_and_ends_the_same(tmp_path, small_units, monkeypatch):
    root = corpus_of(tmp_path / "data")
    clean = prepare(root, tmp_path / "clean", num_proc=1)
    real, encoded = prepare_mod.encode_unit, []

    def stop_at_unit_5(job, unit):
        if unit.index == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle
        encoded.append(unit.index)
        return real(job, unit)

    monkeypatch.setattr(prepare_mod, "encode_unit", stop_at_unit_5)
    with pytest.raises(KeyboardInterrupt):
        prepare(root, tmp_path / "cache", num_proc=1)
    (entry,) = (tmp_path / "cache").iterdir()
    assert not (entry / "meta.json").exists()
    assert sorted(done_units(entry)) == [0, 1, 2, 3, 4]

    monkeypatch.setattr(prepare_mod, "encode_unit", lambda job, unit: (encoded.append(unit.index), real(job, unit))[1])
    encoded.clear()
    resumed = prepare(root, tmp_path / "cache", num_proc=1)
    assert encoded[0] == 5 and 4 not in encoded  # finished units were not encoded again
    assert shard_bytes(resumed) == shard_bytes(clean) and resumed.meta == clean.meta


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="the test kills a worker it patched through fork")
def test_a_killed_worker_stops_the_run_with_one_line_and_a_rerun_finishes(tmp_path, small_units, monkeypatch):
    root = corpus_of(tmp_path / "data")
    clean = prepare(root, tmp_path / "clean", num_proc=1)
    real, parent = prepare_mod.encode_unit, os.getpid()

    def killed_at_unit_7(job, unit):
        if unit.index == 7 and os.getpid() != parent:
            deadline = time.monotonic() + 30
            while len(done_units(job.dir)) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)  # let the main process record some finished units first
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return real(job, unit)

    monkeypatch.setattr(prepare_mod, "encode_unit", killed_at_unit_7)
    with pytest.raises(DataError, match="died .* run again to continue where it stopped"):
        prepare(root, tmp_path / "cache", num_proc=2)
    (entry,) = (tmp_path / "cache").iterdir()
    done = done_units(entry)
    assert 7 not in done and len(done) >= 2
    monkeypatch.setattr(prepare_mod, "encode_unit", real)
    resumed = prepare(root, tmp_path / "cache", num_proc=2)
    assert shard_bytes(resumed) == shard_bytes(clean)


def test_cache_key_follows_the_files_not_their_reading(tmp_path):
    mixed_folder(tmp_path / "data")
    key = Corpus.from_path(tmp_path / "data").fingerprint()
    assert Corpus.from_path(tmp_path / "data").fingerprint() == key
    c = tmp_path / "data" / "sub" / "deeper" / "c.jsonl"
    c.write_text(c.read_text() + json.dumps({"text": "one more"}) + "\n")
    assert Corpus.from_path(tmp_path / "data").fingerprint() != key
    before = Corpus.from_path(tmp_path / "data").fingerprint()
    os.utime(c, ns=(c.stat().st_atime_ns, c.stat().st_mtime_ns + 10**9))  # same size, newer: changed too
    assert Corpus.from_path(tmp_path / "data").fingerprint() != before
    assert Corpus.from_path(tmp_path / "data", text_field="body").fingerprint() != \
        Corpus.from_path(tmp_path / "data").fingerprint()


def test_a_changed_file_makes_a_new_entry(tmp_path):
    mixed_folder(tmp_path / "data")
    first = prepare(tmp_path / "data", tmp_path / "cache", val_fraction=0.2)
    assert prepare(tmp_path / "data", tmp_path / "cache", val_fraction=0.2).dir == first.dir
    (tmp_path / "data" / "a.txt").write_text("The first document, edited.\n")
    second = prepare(tmp_path / "data", tmp_path / "cache", val_fraction=0.2)
    assert second.dir != first.dir and documents_of(second, "train")[0] == "The first document, edited.\n"


def test_bpe_is_trained_on_a_sample_of_training_documents_only(tmp_path, monkeypatch):
    docs = [f"train{k} " * 30 for k in range(40)]
    docs[39] = "validationonly " * 30  # the last document goes to validation
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    seen = []
    real = cache_mod.train_tokenizer
    monkeypatch.setattr(cache_mod, "train_tokenizer",
                        lambda kind, text, **kw: (seen.append(text), real(kind, text, **kw))[1])
    prepare(tmp_path / "d.jsonl", tmp_path / "cache", {**BPE, "train_chars": 1000})
    (sample,) = seen
    assert len(sample.replace(EOT, "")) == 1000 and "validationonly" not in sample
    assert sample.startswith(docs[0] + EOT)


@pytest.mark.parametrize("make, message", [
    (lambda d: d.mkdir(), r"folder .*empty-dir has no .txt, .md, .jsonl or .parquet files"),
    (lambda d: (d.mkdir(), (d / "x.csv").write_text("a,b")), "has no .txt, .md, .jsonl or .parquet files"),
])
def test_a_folder_without_documents_is_one_line(tmp_path, make, message):
    make(tmp_path / "empty-dir")
    with pytest.raises(DataError, match=message):
        Corpus.from_path(tmp_path / "empty-dir")


@pytest.mark.parametrize("line, message", [
    ('{"title": "no text here"}', r"bad.jsonl, line 3: no 'text' field \(it has: title\); set data.text_field"),
    ('{"text": null}', r"bad.jsonl, line 3: 'text' is NoneType, not text"),
    ('{"text": "unterminated', r"bad.jsonl, line 3: not a JSON object"),
])
def test_a_bad_jsonl_line_is_one_line_naming_file_and_line(tmp_path, line, message):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n\n' + line + '\n{"text": "also fine"}\n')
    with pytest.raises(DataError, match=message) as e:
        prepare(tmp_path / "bad.jsonl", tmp_path / "cache", CHAR)
    assert "\n" not in str(e.value)


def test_parquet_files_are_read_by_row_groups(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = [f"row {k} " + " ".join(WORDS[k % 9 :]) for k in range(50)]
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"content": docs, "n": list(range(50))}), tmp_path / "d" / "t.parquet", row_group_size=7)
    (tmp_path / "d" / "z.txt").write_text("a text file after the table")
    files = prepare(Corpus.from_path(tmp_path / "d", text_field="content"), tmp_path / "cache")
    assert files.meta["documents"] == 51
    everything = docs + ["a text file after the table"]
    val = [k for k in range(51) if (50 - k) % 10 == 0]
    assert documents_of(files, "val") == [everything[k] for k in val]
    assert documents_of(files, "train") == [d for k, d in enumerate(everything) if k not in val]
    with pytest.raises(DataError, match=r"t.parquet has no 'text' column \(it has: content, n\)"):
        prepare(tmp_path / "d", tmp_path / "cache")
    data = (tmp_path / "d" / "t.parquet").read_bytes()
    (tmp_path / "d" / "t.parquet").write_bytes(data[: len(data) // 2])  # a damaged copy: one line naming it
    with pytest.raises(DataError, match=r"t.parquet is not a readable .parquet file \(.*\): replace it"):
        prepare(Corpus.from_path(tmp_path / "d", text_field="content"), tmp_path / "cache2")


def test_parquet_without_pyarrow_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.parquet").write_bytes(b"PAR1")
    (tmp_path / "d" / "a.txt").write_text("text")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"reading .parquet files needs pyarrow: pip install -e .*\[data\]"):
        prepare(tmp_path / "d", tmp_path / "cache")


def test_hugging_face_data_set_from_a_local_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa

    docs = [f"story {k}: " + " ".join(WORDS[k % 11 :]) for k in range(30)]
    stories = datasets.Dataset(pa.table({"text": docs}), fingerprint="stories")
    datasets.DatasetDict({"train": stories}).save_to_disk(str(tmp_path / "ds"))
    corpus = Corpus.from_hf(str(tmp_path / "ds"), None, "train")
    files = prepare(corpus, tmp_path / "cache")
    assert documents_of(files, "val") == [docs[9], docs[19], docs[29]]
    assert prepare(Corpus.from_hf(str(tmp_path / "ds"), None, "train"), tmp_path / "cache").dir == files.dir
    dm = TextDataModule(DataConfig(path=f"hf:{tmp_path / 'ds'}", num_proc=1), BPE, block_size=8, seed=0,
                        cache_dir=tmp_path / "cache")
    dm.setup()
    assert dm.files.dir.name.startswith("ds-") and len(dm.files.val) == len(files.val)
    with pytest.raises(DataError, match="has no split 'test'"):
        Corpus.from_hf(str(tmp_path / "ds"), None, "test")
    with pytest.raises(DataError, match=r"has no 'body' column \(it has: text\)"):
        Corpus.from_hf(str(tmp_path / "ds"), None, "train", text_field="body")


def test_hugging_face_without_datasets_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"data.path=hf:some/set needs the `datasets` package: pip install -e .*\[data\]"):
        Corpus.from_hf("some/set", None, "train")


def test_hugging_face_hub_name_offline_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    import datasets.config
    import huggingface_hub.constants

    for module in (datasets.config, huggingface_hub.constants):  # offline, as HF_HUB_OFFLINE=1 would say
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")  # empty: nothing to fall back on
    with pytest.raises(DataError, match=r"could not load the Hugging Face data set 'nobody/no-such-set' .*offline") \
            as e:
        Corpus.from_hf("nobody/no-such-set", None, "train")
    assert "\n" not in str(e.value)


def test_datamodule_trains_on_a_folder(tmp_path):
    mixed_folder(tmp_path / "data")
    config = DataConfig(path=str(tmp_path / "data"), val_fraction=0.2, batch_size=2, num_proc=1)
    dm = TextDataModule(config, BPE, block_size=4, seed=0, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 4) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(DataError, match="data.num_proc must be >= 1"):
        DataConfig(num_proc=0)


# --- windows over several shards ------------------------------------------------------------------------


@pytest.fixture
def three_shards(tmp_path) -> tuple[TokenShards, np.ndarray]:
    pieces = [np.arange(0, 37), np.arange(37, 40), np.arange(40, 101)]
    paths = []
    for k, p in enumerate(pieces):
        paths.append(tmp_path / f"{k}.bin")
        p.astype(np.uint16).tofile(paths[-1])
    return TokenShards(paths, "uint16"), np.arange(101, dtype=np.uint16)


def test_shards_read_as_one_array(three_shards):
    shards, whole = three_shards
    assert len(shards) == 101 and shards.dtype == np.uint16
    assert shards[35:42].tolist() == whole[35:42].tolist() and shards[-3:].tolist() == [98, 99, 100]
    assert int(shards[37]) == 37 and int(shards[-1]) == 100 and shards[:].tolist() == whole.tolist()
    idx = np.array([[0, 36, 37, 38], [39, 40, 99, 100]])
    assert np.array_equal(shards[idx], whole[idx])
    with pytest.raises(IndexError):
        shards[np.array([101])]
    again = pickle.loads(pickle.dumps(shards))  # what a loader worker gets: file names, mapped again
    assert len(pickle.dumps(shards)) < 1000 and again[30:45].tolist() == whole[30:45].tolist()


def test_windows_over_shards_are_those_over_one_array(three_shards):
    shards, whole = three_shards
    for i in range(5):  # batch i is a function of (seed, rank, i), whatever the storage
        a, b = RandomWindows(shards, 8, 6, seed=3, rank=1).batch(i), RandomWindows(whole, 8, 6, seed=3, rank=1).batch(i)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    fixed, plain = FixedWindows(shards, 10), FixedWindows(whole, 10)
    assert len(fixed) == len(plain) == 10
    assert all(torch.equal(fixed[j][0], plain[j][0]) for j in range(10))
