import http.server
import json
import multiprocessing as mp
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gptlab.data import DataError, FixedWindows, RandomWindows, TokenFiles, prepare_tokens, read_text
from gptlab.data import cache as cache_mod
from gptlab.data import prepare as prepare_mod
from gptlab.data.sources import SHAKESPEARE, find_or_download, sha256_file

CHAR = {"kind": "char"}


def test_prepare_splits_90_10_and_reuses_the_cache(shakespeare_text, tmp_path, monkeypatch):
    d = prepare_tokens(shakespeare_text, "shakespeare", CHAR, 0.1, tmp_path)
    files = TokenFiles.open(d)
    assert files.train.dtype == np.uint16
    assert len(files.train) == 1_003_854 and len(files.val) == 111_540  # nanoGPT's split of 1,115,394 chars
    assert files.tokenizer.decode(files.val[:20].tolist()) == shakespeare_text[1_003_854:1_003_874]
    calls = []
    monkeypatch.setattr(cache_mod, "train_tokenizer", lambda *a, **k: calls.append(1))
    assert prepare_tokens(shakespeare_text, "shakespeare", CHAR, 0.1, tmp_path) == d  # reused, not rebuilt
    assert not calls


def test_cache_key_depends_on_corpus_tokenizer_and_split():
    k = cache_mod.cache_key("abc", CHAR, 0.1)
    assert k == cache_mod.cache_key("abc", CHAR, 0.1)
    assert len({k, cache_mod.cache_key("abd", CHAR, 0.1), cache_mod.cache_key("abc", CHAR, 0.2),
                cache_mod.cache_key("abc", {"kind": "bpe", "vocab_size": 512}, 0.1)}) == 4


def test_interrupted_write_leaves_no_partial_files(tmp_path, monkeypatch):
    text = "hello world, " * 100
    real = prepare_mod.atomic_write

    def crash_on_val(path, write, mode="wb"):
        if path.name.startswith("val-"):
            def half(f):
                f.write(b"\x00" * 7)
                raise KeyboardInterrupt  # killed in the middle of writing
            return real(path, half, mode)
        return real(path, write, mode)

    monkeypatch.setattr(prepare_mod, "atomic_write", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(text, "t", CHAR, 0.1, tmp_path)
    (entry,) = tmp_path.iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.jsonl", "plan.json", "shards", "tokenizer.json"]
    assert sorted(p.name for p in (entry / "shards").iterdir()) == ["train-00000.bin"]  # no val, no temp file
    train_file = (entry / "shards" / "train-00000.bin").stat()
    monkeypatch.setattr(prepare_mod, "atomic_write", real)
    d = prepare_tokens(text, "t", CHAR, 0.1, tmp_path)  # incomplete entry: finished
    assert len(TokenFiles.open(d).val) == 130
    assert (entry / "shards" / "train-00000.bin").stat().st_ino == train_file.st_ino  # kept, not written again


def _prepare(args):
    text, cache = args
    return str(prepare_tokens(text, "c", CHAR, 0.1, Path(cache), log=lambda s: None))


def test_concurrent_jobs_build_the_same_entry(tmp_path):
    text = "".join(chr(97 + (i * 7) % 26) for i in range(300_000))
    with mp.get_context("spawn").Pool(3) as pool:
        dirs = pool.map(_prepare, [(text, str(tmp_path))] * 3)
    assert len(set(dirs)) == 1
    files = TokenFiles.open(Path(dirs[0]))
    assert files.tokenizer.decode(files.train[:30].tolist()) == text[:30]
    assert not list(Path(dirs[0]).glob(".*"))  # no temp files left behind


def test_random_windows_are_seeded_per_batch_and_rank():
    tokens = np.arange(1000, dtype=np.uint16)
    a = RandomWindows(tokens, 8, 4, seed=1)
    x, y = a.batch(0)
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])  # targets are inputs shifted by one
    assert torch.equal(a.batch(5)[0], RandomWindows(tokens, 8, 4, seed=1).batch(5)[0])
    assert not torch.equal(a.batch(5)[0], RandomWindows(tokens, 8, 4, seed=1, rank=1).batch(5)[0])
    assert not torch.equal(a.batch(5)[0], RandomWindows(tokens, 8, 4, seed=2).batch(5)[0])
    resumed = next(iter(RandomWindows(tokens, 8, 4, seed=1, start_batch=7)))
    assert torch.equal(resumed[0], a.batch(7)[0])


def test_loader_workers_keep_the_batch_order():
    tokens = np.arange(1000, dtype=np.uint16)
    ds = RandomWindows(tokens, 8, 4, seed=3)
    it = iter(DataLoader(ds, batch_size=None, num_workers=2))
    for i in range(6):
        assert torch.equal(next(it)[0], ds.batch(i)[0])


def test_val_windows_are_fixed_and_cover_the_split():
    tokens = np.arange(1001, dtype=np.uint16)
    v = FixedWindows(tokens, 10)
    assert len(v) == 100
    assert sorted(int(v[j][0][0]) for j in range(100)) == list(range(0, 1000, 10))
    assert [int(v[j][0][0]) for j in range(5)] == [int(FixedWindows(tokens, 10)[j][0][0]) for j in range(5)]


def test_read_text_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second")
    (tmp_path / "skip.md").write_text("not me")
    assert read_text(tmp_path) == "first\n\nsecond"
    assert read_text(tmp_path / "a.txt") == "first"


@pytest.mark.parametrize(
    "content, message",
    [(None, "does not exist"), (b"", "is empty"), (b"  \n", "is empty"), (b"caf\xe9", "not UTF-8 text .byte 0xe9 at offset 3")],
)
def test_read_text_errors(tmp_path, content, message):
    p = tmp_path / "in.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_text(p)


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server: the download code runs for real without leaving this machine."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_checksum(served, tmp_path, monkeypatch):
    monkeypatch.delenv("GPTLAB_DATA_DIR", raising=False)
    root, url = served
    (root / "input.txt").write_text("to be or not to be")
    good = sha256_file(root / "input.txt")
    with pytest.raises(DataError, match="sha256"):
        find_or_download(SHAKESPEARE.file, f"{url}/input.txt", "0" * 64, str(tmp_path / "d1"))
    assert not (tmp_path / "d1").exists()
    p = find_or_download(SHAKESPEARE.file, f"{url}/input.txt", good, str(tmp_path / "d2"))
    assert p.read_text() == "to be or not to be"


def test_offline_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTLAB_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"failed .* copy the file to .*tinyshakespeare/input.txt"):
        find_or_download(SHAKESPEARE.file, "http://127.0.0.1:9/input.txt", None, str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()  # nothing left behind


def test_local_copy_found_through_the_environment(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("x")
    monkeypatch.setenv("GPTLAB_DATA_DIR", str(tmp_path))
    assert find_or_download(SHAKESPEARE.file, "http://127.0.0.1:9/x", None, "/nonexistent") == \
        tmp_path / "tinyshakespeare" / "input.txt"


def test_meta_records_counts_for_bits_per_char(tmp_path):
    d = prepare_tokens("abcd" * 100, "t", CHAR, 0.25, tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    assert (meta["train"]["tokens"], meta["train"]["chars"], meta["val"]["tokens"], meta["val"]["chars"]) == \
        (300, 300, 100, 100)
    assert meta["split_by"] == "position"
