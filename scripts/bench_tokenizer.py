#!/usr/bin/env python
"""gptlab's ByteLevelBPE beside Hugging Face's `tokenizers` on Tiny Shakespeare, in one process.

Reports, as medians of --repeats runs:
  * training time at --vocab tokens (4,096) and the ratio gptlab / hf;
  * encode throughput of the whole file in MB/s (UTF-8 bytes): gptlab's `encode_array` with an empty chunk
    cache each run (a fresh tokenizer), and hf's `encode_batch` over lines and `encode` of the whole text;
    the ratio is gptlab against the better of hf's two;
  * compression (characters per token) at 512, 1,024 and 4,096 tokens for both, and the ratio.

Both train with the same settings: byte-level alphabet, GPT-2 split, min_frequency 2, "<|endoftext|>" as a
special token (counted in the vocabulary size). hf gets the text in pieces cut where the GPT-2 split always
has a boundary, so its pieces pre-tokenize exactly as the whole text and it can use both cores.

    python scripts/bench_tokenizer.py [--data PATH] [--repeats 3]

Last line: `encode MB/s ratio gptlab/hf: R`. The table goes into results/<machine kind>.json (scripts/results.py;
--no-record: not).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gptlab.tokenizers.bpe import EOT, ByteLevelBPE, token_to_str  # noqa: E402
from results import add_flag, record  # noqa: E402

SAFE_CUTS = re.compile(r"(?<=\S)(?=\n)")  # before a newline that follows a non-space: always a chunk boundary


def default_data() -> Path:
    root = os.environ.get("GPTLAB_DATA_DIR") or REPO.parent / "shared" / "data"
    return Path(root) / "tinyshakespeare" / "input.txt"


def median_time(fn, repeats: int, setup=None) -> tuple[float, object]:
    """Median wall time of fn() over repeats runs (setup() before each, untimed), and fn's last result."""
    times, out = [], None
    for _ in range(repeats):
        arg = setup() if setup else None
        start = time.perf_counter()
        out = fn(arg) if setup else fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def hf_train(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SAFE_CUTS.split(text), trainer)
    return tok


def gptlab_train(text: str, vocab_size: int) -> ByteLevelBPE:
    return ByteLevelBPE.train(text, vocab_size=vocab_size, special_tokens=[EOT], min_frequency=2, show_progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="text file (default: Tiny Shakespeare)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; medians are reported")
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary size for the timings")
    add_flag(parser)
    args = parser.parse_args()

    import tokenizers

    text = args.data.read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    r = args.repeats
    print(f"data: {args.data} ({len(text):,} chars, {mb:.2f} MB); tokenizers {tokenizers.__version__}; median of {r}")

    # training
    t_gpt, gpt = median_time(lambda: gptlab_train(text, args.vocab), r)
    t_hf, hf = median_time(lambda: hf_train(text, args.vocab), r)
    print(f"train s at vocab {args.vocab}: gptlab {t_gpt:.3f}, hf {t_hf:.3f}")
    print(f"train time ratio gptlab/hf: {t_gpt / t_hf:.2f}")

    # encoding the whole file
    saved = gpt.to_dict()
    t_cold, ids = median_time(lambda tok: tok.encode_array(text), r, setup=lambda: ByteLevelBPE.from_dict(saved))
    assert gpt.decode(ids) == text, "gptlab round trip failed"
    warm = ByteLevelBPE.from_dict(saved)
    warm.encode_array(text)
    t_warm, _ = median_time(lambda: warm.encode_array(text), r)
    lines = text.splitlines(keepends=True)
    hf.encode_batch(lines)  # let hf build its thread pool before timing
    t_batch, _ = median_time(lambda: hf.encode_batch(lines), r)
    t_whole, hf_ids = median_time(lambda: hf.encode(text), r)
    print(f"encode MB/s gptlab (empty cache each run): {mb / t_cold:.2f}")
    print(f"encode MB/s gptlab (cache warm from a previous run): {mb / t_warm:.2f}")
    print(f"encode MB/s hf encode_batch over lines: {mb / t_batch:.2f}")
    print(f"encode MB/s hf encode of the whole text: {mb / t_whole:.2f}")
    # the two number their tokens differently; compare the tokens themselves, in GPT-2's spelling
    same = [token_to_str(gpt.token_bytes(i)) for i in ids.tolist()] == hf_ids.tokens
    n_hf = len(hf_ids.ids)
    print(f"tokens of the file at vocab {args.vocab}: gptlab {ids.size:,}, hf {n_hf:,} (same tokens: {same})")
    best = mb / min(t_batch, t_whole)
    rows = [[f"train at vocab {args.vocab:,}", f"{t_gpt:.3f} s", f"{t_hf:.3f} s", f"{t_gpt / t_hf:.2f}"],
            ["encode (gptlab: empty cache each run; hf: the better of the two below)", f"{mb / t_cold:.2f} MB/s",
             f"{best:.2f} MB/s", f"**{mb / t_cold / best:.2f}**"],
            ["encode, gptlab's cache warm from a previous run", f"{mb / t_warm:.2f} MB/s", "", ""],
            ["encode, hf `encode_batch` over lines", "", f"{mb / t_batch:.2f} MB/s", ""],
            ["encode, hf `encode` of the whole text", "", f"{mb / t_whole:.2f} MB/s", ""],
            [f"tokens of the file at vocab {args.vocab:,}", f"{ids.size:,}", f"{n_hf:,}",
             "the same tokens" if same else "different tokens"]]

    # compression
    for vocab in (512, 1024, 4096):
        g = gpt if vocab == args.vocab else gptlab_train(text, vocab)
        h = hf if vocab == args.vocab else hf_train(text, vocab)
        cg, ch = len(text) / len(g.encode(text)), len(text) / len(h.encode(text).ids)
        print(f"chars/token at vocab {vocab}: gptlab {cg:.4f}, hf {ch:.4f}, ratio gptlab/hf {cg / ch:.4f}")
        rows.append([f"characters per token at vocab {vocab:,}", f"{cg:.4f}", f"{ch:.4f}", f"{cg / ch:.4f}"])

    last_line = f"encode MB/s ratio gptlab/hf: {(mb / t_cold) / (mb / min(t_batch, t_whole)):.2f}"
    print(last_line)
    if not args.no_record:
        data = "Tiny Shakespeare" if args.data == default_data() else args.data.name
        record("tokenizer", {"columns": ["", "gptlab", "hf `tokenizers`", "gptlab / hf"], "rows": rows},
               last_line=last_line, notes=f"tokenizers {tokenizers.__version__}, {data} ({mb:.2f} MB), median of {r}")


if __name__ == "__main__":
    main()
