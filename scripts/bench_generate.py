"""Generation speed: new tokens/s with and without the KV cache, and against Hugging Face transformers.

Random weights (speed does not depend on them), greedy decoding of a fixed number of new tokens after a
16-token prompt, at the `small` and `gpt2` model shapes, batch 1 and 8. When `transformers` is installed
(`pip install transformers`, a benchmark-only dependency) its `GPT2LMHeadModel.generate(use_cache=True)`
runs on a model of the same shape, device and dtype in the same process.

    python scripts/bench_generate.py [--new-tokens 256] [--repeats 4] [--device cuda] [--dtype float32] [--compile]
                                     [--threads 1]

--dtype (both sides): auto, the default, is what `gptlab generate dtype=auto` picks: bfloat16 where a short probe
finds bf16 matmuls faster than fp32 on the device (CUDA from Ampere on, CPUs whose bf16 units torch uses), else
float32.

--compile: gptlab compiles its one-token step (`decode_one`; CUDA graphs on a GPU) and transformers gets
its static cache (`cache_implementation="static"`, which it compiles itself on CUDA).

Last line: `kv-cache tokens/s ratio gptlab/hf: X.XX` (the lowest ratio over the shapes and batch sizes). The table
goes into results/<machine kind>.json, key the dtype (scripts/results.py; --no-record: not).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptlab.checkpoint import DTYPES
from gptlab.devices import inference_dtype
from gptlab.model import GPT, GPTConfig, generate
from results import add_flag, record

LABELS = {"small": "small", "gpt2": "gpt2 (124M)"}  # in the recorded table
SHAPES = {  # name: (vocab, block, layers, heads, dim)
    "small": (65, 128, 6, 8, 256),
    "gpt2": (50257, 1024, 12, 12, 768),
}


def timed(fns: dict, repeats: int, warmup: bool = True) -> dict:
    """Median seconds of each function, run in turns (a, b, c, b, c, a, ...) so that drifts in this
    machine's speed (memory bandwidth varies by tens of percent here) hit them alike."""
    for fn in fns.values() if warmup else ():
        fn()
    times: dict = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def hf_model(vocab: int, block: int, layers: int, heads: int, dim: int):
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    cfg = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=dim, n_layer=layers, n_head=heads,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None)
    return GPT2LMHeadModel(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    ap.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="weights and activations, both sides "
                    "(auto: bfloat16 where the device has bf16 matrix units, else float32)")
    ap.add_argument("--compile", action="store_true", help="torch.compile gptlab's decode step (see above)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's); 1 is steadier on a "
                    "machine that other jobs share, where a thread kept waiting stalls every parallel op")
    add_flag(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.dtype = inference_dtype(args.dtype, device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {device} ({torch.get_num_threads()} CPU threads), {args.dtype}, "
          f"compile={args.compile}, {args.new_tokens} new tokens after a 16-token prompt (fewer where the context "
          f"is shorter), greedy, median of {args.repeats}")

    def synced(fn):  # CUDA runs asynchronously: a run ends when the device is done
        return lambda: (fn(), torch.cuda.synchronize(device) if device.type == "cuda" else None)

    hf_ratios, rows = [], []
    for name in args.shapes:
        vocab, block, layers, heads, dim = SHAPES[name]
        model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=dim,
                              dropout=0.0)).eval().to(device, dtype)
        hf = hf_model(vocab, block, layers, heads, dim)
        hf = hf.to(device, dtype) if hf is not None else None
        hf_extra = {"cache_implementation": "static"} if args.compile else {}
        n = min(args.new_tokens, block - 16)  # transformers' GPT-2 cannot go past its context; keep both inside it
        for batch in (1, 8):
            prompt = torch.randint(0, vocab, (batch, 16), device=device)
            fns = {"cache": synced(lambda: generate(model, prompt, n, temperature=0, compile=args.compile))}
            if hf is not None:
                fns["hf"] = synced(lambda: hf.generate(
                    prompt, attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True, max_new_tokens=n,
                    min_new_tokens=n, pad_token_id=0, **hf_extra))
            with torch.inference_mode():
                rate = {k: batch * n / v for k, v in timed(fns, args.repeats).items()}
                # without the cache every step re-reads the whole context: at the gpt2 shape that takes
                # minutes per run, so it is timed once, at batch 1
                if not (name == "gpt2" and batch > 1):
                    no_cache = synced(lambda: generate(model, prompt, n, temperature=0, use_cache=False))
                    rate["no cache"] = batch * n / timed({"x": no_cache}, 1, warmup=False)["x"]
            line = "  ".join(f"{k} {v:8,.0f}" for k, v in rate.items())
            extra = ""
            if "no cache" in rate:
                extra += f"  cache/no-cache {rate['cache'] / rate['no cache']:.2f}x"
            if "hf" in rate:
                hf_ratios.append(rate["cache"] / rate["hf"])
                extra += f"  gptlab/hf {hf_ratios[-1]:.2f}x"
            print(f"{name:>6} batch {batch}, {n} new tokens: new tokens/s  {line}{extra}", flush=True)
            speed = {k: f"{rate[k]:,.0f} tok/s" if k in rate else "–" for k in ("cache", "no cache", "hf")}
            ratio = rate["cache"] / rate["hf"] if "hf" in rate else None
            shown = "–" if ratio is None else f"**{ratio:.2f}**" if ratio >= 1 else f"{ratio:.2f}"  # bold: ahead
            rows.append([LABELS.get(name, name), str(batch), str(n), args.dtype, speed["cache"], speed["no cache"],
                         speed["hf"], shown])
    if hf_ratios:
        last_line = f"kv-cache tokens/s ratio gptlab/hf: {min(hf_ratios):.2f}"
    else:
        last_line = "kv-cache tokens/s ratio gptlab/hf: n/a (pip install transformers to compare)"
    print(last_line)
    if not args.no_record:
        columns = ["shape", "batch", "new tokens", "dtype", "gptlab, KV cache", "gptlab, no cache", "transformers",
                   "gptlab / transformers"]
        try:
            import transformers
            versions = f"transformers {transformers.__version__}, "
        except ImportError:
            versions = ""
        record("generate", {"columns": columns, "rows": rows}, last_line=last_line,
               key=args.dtype + ("-compile" if args.compile else ""),
               notes=f"{versions}{device}, {torch.get_num_threads()} threads, median of {args.repeats}")


if __name__ == "__main__":
    main()
