"""llama.cpp against gptlab's own decode: one model exported to GGUF (f32, f16, q8_0), run by llama-cpp-python on
the same CPU with the same threads as gptlab's KV-cache decode.

    python scripts/bench_gguf.py                          # GPT-2 124M's shape, random weights
    python scripts/bench_gguf.py --arch llama             # the same size with rope, RMSNorm and SwiGLU
    python scripts/bench_gguf.py --ckpt outputs/RUN       # a trained run: top-1 agreement on held-out text as well

Greedy decoding of --new-tokens after a --prompt-tokens prompt, new tokens/s (the prompt's prefill included, as in
bench_generate.py), median of --repeats runs taken in turns. gptlab decodes in float32 and in what dtype=auto picks
here (bfloat16 on CPUs with bf16 units), llama.cpp each file. Random weights have a vocabulary of 50,257 rows whose
tokenizer is a small BPE (the rest unused tokens): speed does not depend on the weights. With --ckpt, each file's
greedy choice is compared with gptlab's float32 one at every position of held-out text (Tiny Shakespeare's last
10%, or --text). Reported with the file sizes; no target. Last line: `llama.cpp q8_0 / gptlab decode tokens/s: R`
(against gptlab's faster dtype).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gptlab import checkpoint
from gptlab.data.sources import SHAKESPEARE, find_or_download
from gptlab.devices import inference_dtype
from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig, generate
from gptlab.model.gguf_export import TYPES, save_gguf
from gptlab.tokenizers import ByteLevelBPE, Tokenizer
from results import add_flag, record

REPO = Path(__file__).resolve().parents[1]
LLAMA = dict(pos="rope", norm_type="rmsnorm", activation="swiglu", bias=False)


def random_model(args: argparse.Namespace) -> tuple[GPT, Tokenizer, str]:
    n_layer, n_embd, n_head = map(int, args.shape.split(","))
    text = "".join(chr(c) for c in range(32, 127)) * 4  # a few merges are enough: the tokenizer is not timed
    tok = ByteLevelBPE.train(text, vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=0.0,
                       **(LLAMA if args.arch == "llama" else {}))
    return GPT(config).eval(), tok, f"{args.arch} {args.shape} (n_layer,n_embd,n_head), random"


def held_out(args: argparse.Namespace, tok: Tokenizer, block: int) -> list[list[int]]:
    """Up to --windows windows of held-out text, each a context's length."""
    try:
        path = Path(args.text) if args.text else \
            find_or_download(SHAKESPEARE.file, SHAKESPEARE.url, SHAKESPEARE.sha256, str(REPO / "data"))
    except GptlabError as e:
        sys.exit(f"error: {e}")
    text = path.read_text(encoding="utf-8")
    text = text if args.text else text[int(len(text) * 0.9):]  # Tiny Shakespeare's validation split
    ids = tok.encode(text[: args.windows * block * 8])
    return [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)][: args.windows]


def timed(fns: dict, repeats: int) -> dict:
    """Median seconds of each function after one warm-up each, run in turns so that a drift hits them alike."""
    for fn in fns.values():
        fn()
    times: dict = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def llama_decode(llm, prompt: list[int], n: int) -> None:
    """Greedy: the prompt in one batch, then n tokens one at a time through llama.cpp's KV cache."""
    llm.reset()
    llm.eval(prompt)
    for _ in range(n):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", help="a run dir or .ckpt (default: a random model of --shape)")
    ap.add_argument("--shape", default="12,768,12", help="n_layer,n_embd,n_head of the random model (GPT-2 124M's)")
    ap.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"], help="the random model's architecture")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of both (default: torch's); on a machine "
                    "other jobs share, 1 is far steadier: llama.cpp's and torch's threads wait for each other spinning")
    ap.add_argument("--text", help="--ckpt: the held-out text (default: Tiny Shakespeare's last 10%%)")
    ap.add_argument("--windows", type=int, default=8, help="--ckpt: windows of held-out text compared")
    add_flag(ap)
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install llama-cpp-python (it builds llama.cpp from source)")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.ckpt:
        loaded = checkpoint.load(args.ckpt)
        model, tok, what = loaded.model, loaded.tokenizer, f"{loaded.path} (step {loaded.step})"
    else:
        model, tok, what = random_model(args)
    c = model.config
    n = min(args.new_tokens, c.block_size - args.prompt_tokens)
    prompt = torch.randint(0, tok.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    print(f"{what}; torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, threads: {threads}; "
          f"{n} new tokens after {args.prompt_tokens}, greedy, median of {args.repeats}", flush=True)

    weights = {id(p): p for p in model.parameters()}  # a tied matrix once
    sizes = {"gptlab (float32 weights)": sum(p.numel() * 4 for p in weights.values())}
    llms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for type in TYPES:
            path = save_gguf(model.float(), tok, Path(tmp) / f"model-{type}.gguf", type)
            sizes[f"llama.cpp {type}"] = path.stat().st_size
            llms[type] = llama_cpp.Llama(model_path=str(path), n_ctx=c.block_size, n_batch=max(args.prompt_tokens, 512),
                                         n_threads=threads, n_threads_batch=threads, logits_all=bool(args.ckpt),
                                         verbose=False)
    dtypes = list(dict.fromkeys(["float32", inference_dtype("auto", torch.device("cpu"))]))
    models = {d: GPT(c).eval().to(getattr(torch, d)) for d in dtypes}
    for m in models.values():
        m.load_state_dict(model.state_dict())
    fns = {f"gptlab {d}": (lambda m=m: generate(m, prompt, n, temperature=0)) for d, m in models.items()}
    fns |= {f"llama.cpp {t}": (lambda llm=llm: llama_decode(llm, prompt[0].tolist(), n)) for t, llm in llms.items()}
    with torch.inference_mode():
        rate = {k: n / s for k, s in timed(fns, args.repeats).items()}

    agreement = {}
    if args.ckpt:  # each file's greedy choice against gptlab's float32 one, at every position of held-out text
        windows = held_out(args, tok, c.block_size)
        with torch.inference_mode():
            ours = torch.cat([model(torch.tensor([w]))[0][0].argmax(-1) for w in windows])
        for type, llm in llms.items():
            theirs = []
            for w in windows:
                llm.reset()
                llm.eval(w)
                theirs.append(torch.from_numpy(llm.scores[: len(w)].argmax(-1)))
            agreement[f"llama.cpp {type}"] = (torch.cat(theirs) == ours).float().mean().item()
        print(f"top-1 agreement with gptlab float32 on {len(ours):,} held-out positions: "
              + ", ".join(f"{k.split()[-1]} {v:.2%}" for k, v in agreement.items()))

    rows = []
    for k in fns:
        size = sizes.get(k, sizes["gptlab (float32 weights)"] if k.startswith("gptlab") else 0)
        agree = f"{agreement[k]:.2%}" if k in agreement else "–"
        rows.append([k, f"{size / 2**20:,.1f} MiB", f"{rate[k]:,.1f} tok/s", agree])
        print(f"{k:>18}: {rows[-1][1]:>12}  {rows[-1][2]:>14}  top-1 agreement {agree}")
    best = max(v for k, v in rate.items() if k.startswith("gptlab"))
    last_line = f"llama.cpp q8_0 / gptlab decode tokens/s: {rate['llama.cpp q8_0'] / best:.2f}"
    print(last_line)
    if not args.no_record:
        columns = ["", "file / weights", "new tokens/s", "top-1 agreement (held-out)"]
        key = "ckpt" if args.ckpt else f"{args.arch}-{args.shape}"
        record("gguf", {"columns": columns, "rows": rows}, last_line=last_line, key=key,
               notes=f"{what}; llama-cpp-python {llama_cpp.__version__}, threads: {threads}, {n} new tokens after "
                     f"{args.prompt_tokens}, greedy, median of {args.repeats}")


if __name__ == "__main__":
    main()
