#!/usr/bin/env python
"""Preparing a big corpus: gptlab's tokenizing pipeline (data/prepare.py) against Hugging Face `tokenizers`.

1. Writes a corpus of --size-mb MB (default 1,000) from --seed, nothing downloaded: .jsonl files of
   documents mixing prose of Zipf-distributed words, numbers, punctuation, markdown, code-like lines and
   text in other scripts (Greek, Cyrillic, CJK, accents, emoji).
2. Trains a GPT-2-size byte-level BPE (50,257 tokens with "<|endoftext|>") with gptlab on a sample of
   --train-chars characters, or loads --vocab/--merges (GPT-2's files) when given.
3. Tokenizes the corpus into token shards through `gptlab.data.prepare_tokens` with each --procs value
   (default 1 and 2), each in a fresh process and a fresh cache, and then does the same work with
   Hugging Face `tokenizers` (same vocabulary and merges; its own threads): read every document, encode
   it, put the end-of-text token after it, write uint16 shards.
Each run's wall time and peak memory (the sum over its process and all its children, sampled from
/proc every 50 ms: resident set and proportional set size, which counts pages shared after fork once)
are printed, with the ratios.

    python scripts/bench_prepare.py --size-mb 200
    python scripts/bench_prepare.py                 # 1 GB; targets: <= 4 min and <= 2 GB on 2 cores

The table goes into results/<machine kind>.json, key the corpus size (scripts/results.py; --no-record: not).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from results import add_flag, record  # noqa: E402  (scripts/, on the path as this script's folder)

EOT = "<|endoftext|>"
FILES = 8  # the corpus is this many .jsonl files

# --- the corpus -----------------------------------------------------------------------------------------

COMMON = ("the of and to a in is that for it as was with be by on not he I this are or his from at which but "
          "have an they you were her she there been one all we their has would when if so no will more can "
          "about said what out up them into some than time only other new could its these two may first then "
          "do any like my now over such our man me even most made after also did many before must through").split()
SCRIPTS = {  # alphabets to make words of, in other scripts
    "greek": "αβγδεζηθικλμνξοπρστυφχψω",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщыэюя",
    "latin": "abcdefghijklmnopqrstuvwxyzéèàüöäçñ",
}
CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
EMOJI = [chr(c) for c in (*range(0x1F600, 0x1F640), *range(0x1F300, 0x1F320))]
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "st", "ch", "sh", "ng", "er", "in"]


def word_list(rng: np.random.Generator, n: int) -> list[str]:
    """n made-up words from syllables (2 to 4 each), the common English words first."""
    words = list(COMMON)
    seen = set(words)
    while len(words) < n:
        w = "".join(rng.choice(SYLLABLES, size=int(rng.integers(1, 5))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def zipf(rng: np.random.Generator, n: int, size: int, s: float = 1.1) -> np.ndarray:
    """size indices into n items, item r drawn with probability ~ 1 / (r + 2.7)^s (as word frequencies)."""
    p = 1.0 / (np.arange(n) + 2.7) ** s
    return rng.choice(n, size=size, p=p / p.sum())


class Writer:
    """Documents of several kinds, drawn from seeded generators; each call gives one document."""

    def __init__(self, seed: int) -> None:
        rng = self.rng = np.random.default_rng(seed)
        words = word_list(rng, 60_000)
        caps = [w.capitalize() for w in words[:5000]]
        punct = [w + p for w in words[:3000] for p in (",", ".", ";", ":", "?", "!", ")")]
        numbers = [self._number(k) for k in range(20_000)]
        rest = np.array(caps + punct + numbers + words[2000:], dtype=object)
        rng.shuffle(rest)  # numbers, capitals and punctuation spread over the frequency ranks
        self.pool = np.array(words[:2000] + rest.tolist(), dtype=object)
        self.idents = [f"{a}_{b}" for a, b in zip(words[100:3100], words[3100:6100])] + words[:2000]
        self.foreign = {k: np.array(["".join(rng.choice(list(a), size=int(rng.integers(2, 9)))) for _ in range(3000)],
                                    dtype=object) for k, a in SCRIPTS.items()}
        self.cjk = np.array(CJK + ["。"] * 150, dtype=object)
        self.buf, self.at = zipf(rng, len(self.pool), 1 << 22), 0

    def _number(self, k: int) -> str:
        r = self.rng
        return [str(int(r.integers(1800, 2030))), str(int(r.integers(0, 100))), f"{r.random() * 1000:.2f}",
                f"${int(r.integers(1, 500))}.{int(r.integers(0, 100)):02d}", f"{int(r.integers(0, 101))}%",
                f"{int(r.integers(1, 10**6)):,}"][k % 6]

    def words(self, n: int) -> list[str]:
        if self.at + n > len(self.buf):
            self.buf, self.at = zipf(self.rng, len(self.pool), max(1 << 22, n)), 0
        out = self.pool[self.buf[self.at : self.at + n]].tolist()
        self.at += n
        return out

    def prose(self) -> str:
        sizes = self.rng.integers(20, 200, size=int(self.rng.integers(1, 8)))
        ws = self.words(int(sizes.sum()))
        paras, at = [], 0
        for n in sizes:
            paras.append(" ".join(ws[at : at + n]).capitalize() + ".")
            at += n
        if self.rng.random() < 0.3:
            paras.insert(1, f'"{" ".join(self.words(6))}," they said.')
        return "\n\n".join(paras)

    def markdown(self) -> str:
        r = self.rng
        lines = [f"# {' '.join(self.words(4)).title()}", ""]
        for kind in r.random(size=int(r.integers(3, 15))):
            if kind < 0.4:
                lines.append(f"- {' '.join(self.words(int(r.integers(3, 12))))}")
            elif kind < 0.6:
                lines.append(f"https://example.org/{'/'.join(self.words(3))}?id={int(r.integers(10**5))}")
            else:
                lines.append(" ".join(self.words(int(r.integers(10, 40)))))
        return "\n".join(lines)

    def code(self) -> str:
        r, ids = self.rng, self.idents
        pick = iter(r.integers(0, len(ids), size=200).tolist())
        lines = []
        for _ in range(int(r.integers(2, 6))):
            f, a, b = ids[next(pick)], ids[next(pick)], ids[next(pick)]
            lines += [f"def {f}({a}, {b}=None):", f'    """{" ".join(self.words(8))}."""']
            for k in r.integers(0, 6, size=int(r.integers(2, 8))):
                x, y, n = ids[next(pick)], ids[next(pick)], next(pick) % 100
                lines.append([f"    {x} = {y} + {n}", f"    if {x} is None:",
                              f"        return {{'{x}': {y}, 'n': {n}}}",
                              f"    for i in range(len({x})):", f"        {x}[i] += {y} * 0.5",
                              f'    print(f"{x}={{{x}!r}}")'][k])
            lines.append(f"    return {a}\n")
        return "\n".join(lines)

    def foreign_text(self) -> str:
        r = self.rng
        kind = ["greek", "cyrillic", "latin", "cjk"][int(r.integers(4))]
        if kind == "cjk":
            text = "".join(self.cjk[zipf(r, len(self.cjk), int(r.integers(100, 800)))].tolist())
        else:
            pool = self.foreign[kind]
            text = " ".join(pool[zipf(r, len(pool), int(r.integers(50, 400)))].tolist())
        if r.random() < 0.3:
            text += " " + "".join(EMOJI[k] for k in r.integers(0, len(EMOJI), size=3))
        return text

    def document(self) -> str:
        k = self.rng.random()
        kind = self.prose if k < 0.6 else self.markdown if k < 0.75 else self.code if k < 0.9 else self.foreign_text
        return kind()


def write_corpus(folder: Path, size_mb: float, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = int(size_mb * 1e6)
    per_file = target // FILES + 1
    writer = Writer(seed)
    for k in range(FILES):
        written = 0
        with open(folder / f"part-{k:02d}.jsonl", "w", encoding="utf-8") as f:
            while written < per_file:
                line = json.dumps({"text": writer.document(), "id": written}, ensure_ascii=False) + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))


def corpus_documents(folder: Path):
    for path in sorted(folder.glob("*.jsonl")):
        with open(path, "rb") as f:
            for line in f:
                yield json.loads(line)["text"]


# --- the tokenizer --------------------------------------------------------------------------------------


def train_tokenizer(corpus: Path, chars: int, out: Path) -> float:
    """A 50,257-token BPE learnt by gptlab on the first `chars` characters of the corpus; returns seconds."""
    from gptlab.tokenizers.bpe import ByteLevelBPE

    parts, n = [], 0
    for doc in corpus_documents(corpus):
        parts.append(doc)
        n += len(doc) + len(EOT)
        if n >= chars:
            break
    start = time.perf_counter()
    tok = ByteLevelBPE.train(EOT.join(parts)[:chars], vocab_size=50_257, special_tokens=[EOT], show_progress=False)
    seconds = time.perf_counter() - start
    tok.save(out)
    return seconds


# --- the two pipelines, each run in a child process of its own -------------------------------------------


def run_gptlab(corpus: Path, tokenizer: Path, cache: Path, num_proc: int) -> dict:
    from gptlab.data import Corpus, prepare_tokens
    from gptlab.tokenizers.bpe import ByteLevelBPE

    tok = ByteLevelBPE.load(tokenizer)
    d = prepare_tokens(Corpus.from_path(corpus), "bench", tok, 0.1, cache, num_proc=num_proc,
                       log=lambda s: print(s, file=sys.stderr))
    meta = json.loads((d / "meta.json").read_text())
    return {"tokens": meta["train"]["tokens"] + meta["val"]["tokens"], "documents": meta["documents"]}


def run_hf(corpus: Path, tokenizer: Path, out: Path) -> dict:
    """The same work with Hugging Face `tokenizers`: documents in batches, end-of-text after each, uint16 shards."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from gptlab.tokenizers.bpe import ByteLevelBPE
    from gptlab.tokenizers.hf_export import hf_tokenizer_files

    files = hf_tokenizer_files(ByteLevelBPE.load(tokenizer))
    for name in ("vocab.json", "merges.txt"):
        (out / name).write_text(files[name], encoding="utf-8")
    tok = Tokenizer(models.BPE.from_file(str(out / "vocab.json"), str(out / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens([EOT])
    eot = tok.token_to_id(EOT)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    tokens = docs = 0
    for path in sorted(corpus.glob("*.jsonl")):
        with open(path, "rb") as f, open(out / f"{path.stem}.bin", "wb") as shard:
            while True:
                batch = [json.loads(line)["text"] for _, line in zip(range(2000), f)]
                if not batch:
                    break
                ids = np.fromiter((i for e in encode(batch) for i in (*e.ids, eot)), dtype=np.uint16)
                ids.tofile(shard)
                tokens, docs = tokens + ids.size, docs + len(batch)
    return {"tokens": tokens, "documents": docs}


# --- measuring a child process tree ----------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _memory(pids: list[int]) -> tuple[int, int]:
    """(resident set, proportional set) in bytes, summed over pids."""
    rss = pss = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                rss += int(f.read().split()[1]) * page
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return rss, pss


def measured(args: list[str]) -> dict:
    """Run this script as a child with args; its result, wall seconds, CPU seconds (all its processes) and
    peak memory of its process tree."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            rss, pss = _memory(_tree(child.pid))
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"{' '.join(args[:2])} failed with status {child.returncode}")
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    return {**json.loads(out.strip().splitlines()[-1]), "seconds": seconds, "cpu": cpu_seconds, "rss": peak[0],
            "pss": peak[1], "load": os.getloadavg()[0]}


# --- main -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=1000, help="corpus size in MB (default 1,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--procs", default="1,2", help="gptlab's num_proc values to run, comma-separated")
    parser.add_argument("--train-chars", type=int, default=5_000_000, help="characters the BPE is trained on")
    parser.add_argument("--vocab", type=Path, help="GPT-2's vocab.json (with --merges) instead of training")
    parser.add_argument("--merges", type=Path)
    parser.add_argument("--skip-hf", action="store_true", help="run gptlab only")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # internal: run one pipeline
    add_flag(parser)
    args = parser.parse_args()
    if args.child:
        kind, corpus, tokenizer, out, *rest = args.child
        result = (run_gptlab(Path(corpus), Path(tokenizer), Path(out), int(rest[0])) if kind == "gptlab"
                  else run_hf(Path(corpus), Path(tokenizer), Path(out)))
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = args.dir or Path(tmp)
        corpus = work / f"corpus-{args.size_mb:g}mb-seed{args.seed}"
        if not (corpus / "done").is_file():
            start = time.perf_counter()
            write_corpus(corpus, args.size_mb, args.seed)
            (corpus / "done").write_text("")
            print(f"corpus: wrote {corpus} in {time.perf_counter() - start:.1f} s")
        size = sum(p.stat().st_size for p in corpus.glob("*.jsonl"))
        print(f"corpus: {size / 1e6:,.1f} MB in {FILES} .jsonl files, seed {args.seed}")

        tokenizer = work / "bpe-50257.json"
        if tokenizer.is_file() and not args.vocab:
            print(f"tokenizer: {tokenizer} (from an earlier run in this folder)")
        elif args.vocab:
            from gptlab.tokenizers.bpe import ByteLevelBPE

            ByteLevelBPE.from_vocab_merges(args.vocab, args.merges).save(tokenizer)
            print(f"tokenizer: loaded {args.vocab}")
        else:
            seconds = train_tokenizer(corpus, args.train_chars, tokenizer)
            print(f"tokenizer: gptlab trained 50,257 tokens on {args.train_chars:,} characters in {seconds:.1f} s")

        runs = {}
        for n in [int(p) for p in args.procs.split(",")]:
            shutil.rmtree(work / f"cache-{n}", ignore_errors=True)  # a fresh cache: the whole preparation runs
            runs[f"gptlab num_proc={n}"] = measured(["--child", "gptlab", str(corpus), str(tokenizer),
                                                     str(work / f"cache-{n}"), str(n)])
        if not args.skip_hf:
            (work / "hf").mkdir(exist_ok=True)
            runs["hf tokenizers"] = measured(["--child", "hf", str(corpus), str(tokenizer), str(work / "hf")])

        print(f"\n{'run':<22}{'seconds':>9}{'CPU s':>8}{'MB/s':>8}{'peak RSS MB':>13}{'peak PSS MB':>13}"
              f"{'tokens':>14}{'1 GB: min':>11}{'load':>6}")
        rows = []
        for name, r in runs.items():
            print(f"{name:<22}{r['seconds']:>9.1f}{r['cpu']:>8.1f}{size / 1e6 / r['seconds']:>8.2f}"
                  f"{r['rss'] / 1e6:>13.0f}{r['pss'] / 1e6:>13.0f}{r['tokens']:>14,}"
                  f"{r['seconds'] * 1e9 / size / 60:>11.1f}{r['load']:>6.1f}")
            rows.append([name, f"{r['seconds']:.1f}", f"{r['cpu']:.1f}", f"{size / 1e6 / r['seconds']:.2f}",
                         f"{r['rss'] / 1e6:,.0f}", f"{r['pss'] / 1e6:,.0f}", f"{r['tokens']:,}",
                         f"{r['seconds'] * 1e9 / size / 60:.1f}", f"{r['load']:.1f}"])
        last_line = (f"(CPU s: all processes of the run; load: the machine's 1-minute load average at the end of the "
                     f"run, on {os.cpu_count()} cores: above that, the run shared its cores with other work)")
        print(last_line)
        hf = runs.get("hf tokenizers")
        names = sorted((k for k in runs if k.startswith("gptlab")), key=lambda k: int(k.split("=")[1]))
        if len(names) > 1:
            a, b = runs[names[0]], runs[names[-1]]
            last_line = (f"scaling: {names[-1]} takes {b['seconds'] / a['seconds']:.2f}x the time of {names[0]} "
                         f"and {b['cpu'] / a['cpu']:.2f}x its CPU time")
            print(last_line)
        ratios = []
        for k in names if hf else ():
            r = runs[k]
            ratios.append(f"{k} / hf: time {r['seconds'] / hf['seconds']:.2f}x, peak PSS {r['pss'] / hf['pss']:.2f}x, "
                          f"same token count: {r['tokens'] == hf['tokens']}")
            print(ratios[-1])
    if not args.no_record:
        columns = ["run", "seconds", "CPU s", "MB/s", "peak RSS MB", "peak PSS MB", "tokens", "1 GB: min", "load"]
        tokenizer = f"GPT-2's {args.vocab.name}" if args.vocab else f"a BPE trained on {args.train_chars:,} characters"
        record("prepare", {"columns": columns, "rows": rows}, key=f"{args.size_mb:g}mb",
               last_line="\n".join(ratios) or last_line,
               notes=f"{size / 1e6:,.1f} MB in {FILES} .jsonl files, seed {args.seed}, {tokenizer}")


if __name__ == "__main__":
    main()
