"""Generation speed: new tokens/s with and without the KV cache, and against Hugging Face transformers.

Random weights (speed does not depend on them), greedy decoding of a fixed number of new tokens after a
16-token prompt, at the `small` and `gpt2` model shapes, batch 1 and 8, on the CPU. When `transformers`
is installed (`pip install transformers`, a benchmark-only dependency) its `GPT2LMHeadModel.generate(
use_cache=True)` runs on a model of the same shape in the same process.

    python scripts/bench_generate.py [--new-tokens 256] [--repeats 3]

Last line: `kv-cache tokens/s ratio gptlab/hf: X.XX` (the lowest ratio over the shapes and batch sizes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptlab.model import GPT, GPTConfig, generate

SHAPES = {  # name: (vocab, block, layers, heads, dim)
    "small": (65, 128, 6, 8, 256),
    "gpt2": (50257, 1024, 12, 12, 768),
}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def hf_model(vocab: int, block: int, layers: int, heads: int, dim: int):
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    cfg = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=dim, n_layer=layers, n_head=heads,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    args = ap.parse_args()
    torch.manual_seed(0)
    n = args.new_tokens
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n} new tokens after a 16-token prompt, "
          f"greedy, median of {args.repeats}")
    hf_ratios = []
    for name in args.shapes:
        vocab, block, layers, heads, dim = SHAPES[name]
        model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=dim,
                              dropout=0.0)).eval()
        hf = hf_model(vocab, block, layers, heads, dim)
        for batch in (1, 8):
            prompt = torch.randint(0, vocab, (batch, 16))
            rate = {}
            with torch.inference_mode():
                rate["cache"] = batch * n / timed(lambda: generate(model, prompt, n, temperature=0), args.repeats)
                # without the cache every step re-reads the whole context: at the gpt2 shape and batch 8 that
                # takes minutes, and batch 1 already shows the gap
                if not (name == "gpt2" and batch > 1):
                    rate["no cache"] = batch * n / timed(
                        lambda: generate(model, prompt, n, temperature=0, use_cache=False), args.repeats)
                if hf is not None:
                    rate["hf"] = batch * n / timed(lambda: hf.generate(
                        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True,
                        max_new_tokens=n, min_new_tokens=n, pad_token_id=0), args.repeats)
            line = "  ".join(f"{k} {v:8,.0f}" for k, v in rate.items())
            extra = ""
            if "no cache" in rate:
                extra += f"  cache/no-cache {rate['cache'] / rate['no cache']:.2f}x"
            if "hf" in rate:
                hf_ratios.append(rate["cache"] / rate["hf"])
                extra += f"  gptlab/hf {hf_ratios[-1]:.2f}x"
            print(f"{name:>6} batch {batch}: new tokens/s  {line}{extra}")
    if hf_ratios:
        print(f"kv-cache tokens/s ratio gptlab/hf: {min(hf_ratios):.2f}")
    else:
        print("kv-cache tokens/s ratio gptlab/hf: n/a (pip install transformers to compare)")


if __name__ == "__main__":
    main()
