"""What a Muon step costs: torch.optim.Muon's own step (one matrix at a time) against gptlab's StackedMuon (the
updates of one shape orthogonalised together), beside AdamW's step and a training step's forward and backward
passes, on this machine, in this process, alternating.

    python scripts/bench_muon.py                               # experiment=shakespeare_cpu's shape and model=small
    python scripts/bench_muon.py --ns-dtype float32            # as on a CPU without bf16 units
    python scripts/bench_muon.py --shape 12,768                # GPT-2 124M's blocks (n_layer,n_embd)

Last line: `muon step, torch/gptlab time: R` (the smallest over the shapes; above 1: gptlab's step is faster). The
table goes into results/<machine kind>.json, key the Newton-Schulz dtype and steps (scripts/results.py; --no-record:
not).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from gptlab.lit.optim import StackedMuon
from gptlab.model import GPT, GPTConfig, param_groups
from results import add_flag, record

SHAPES = {"shakespeare_cpu": (2, 128), "model=small": (GPTConfig.n_layer, GPTConfig.n_embd)}


def ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of fn over repeats, after a few warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench(n_layer: int, n_embd: int, ns_dtype: torch.dtype, ns_steps: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=n_layer, n_head=max(1, n_embd // 64),
                          n_embd=n_embd, bias=False, dropout=0.0))
    x = torch.randint(0, 65, (32, 64))

    def forward_backward() -> None:
        model.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ns_dtype == torch.bfloat16):
            model(x, x)[1].backward()

    forward_backward()  # gradients for the optimizers to step with
    hidden = param_groups(model, hidden=True)[0]["params"]
    others = [p for p in model.parameters() if all(p is not h for h in hidden)]
    muon = dict(lr=1e-4, momentum=0.95, nesterov=True, ns_steps=ns_steps)  # a small lr: the model barely moves
    steps = {"adamw": torch.optim.AdamW(model.parameters(), lr=1e-6, foreach=True).step,
             "torch muon": torch.optim.Muon(hidden, **muon).step,
             "gptlab muon": StackedMuon(hidden, ns_dtype=ns_dtype, **muon).step,
             "adamw (rest)": torch.optim.AdamW(others, lr=1e-6, foreach=True).step}
    if ns_dtype != torch.bfloat16:
        del steps["torch muon"]  # torch's own is bf16 only
    out = {"forward+backward": ms(forward_backward, repeats)}
    for _ in range(2):  # alternate, keep the better of two rounds: this machine's speed drifts
        for name, step in steps.items():
            out[name] = min(out.get(name, float("inf")), ms(step, repeats))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", action="append", help="n_layer,n_embd (repeatable); default: " + ", ".join(SHAPES))
    ap.add_argument("--ns-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--ns-steps", type=int, default=4, help="Newton-Schulz steps (the modern recipe's 4)")
    ap.add_argument("--repeats", type=int, default=30)
    add_flag(ap)
    args = ap.parse_args()
    shapes = {s: tuple(map(int, s.split(","))) for s in args.shape} if args.shape else SHAPES
    ratios, rows, last_line = [], [], ""
    for label, (n_layer, n_embd) in shapes.items():
        r = bench(n_layer, n_embd, getattr(torch, args.ns_dtype), args.ns_steps, args.repeats)
        print(f"{label} ({n_layer} layers x {n_embd}, batch 32 x 64, Newton-Schulz {args.ns_steps} steps in "
              f"{args.ns_dtype}), ms:")
        for name, value in r.items():
            print(f"  {name:<17} {value:8.2f}")
        gptlab_step = r["gptlab muon"] + r["adamw (rest)"]
        cost = (r["forward+backward"] + gptlab_step) / (r["forward+backward"] + r["adamw"])
        last_line = f"  a training step with Muon costs {cost:.2f}x one with AdamW (gptlab's Muon)"
        print(last_line)
        if "torch muon" in r:
            ratios.append(r["torch muon"] / r["gptlab muon"])
            last_line = f"  torch/gptlab Muon step time: {ratios[-1]:.2f}"
            print(last_line)
        rows.append([f"{label} ({n_layer} layers x {n_embd})",
                     *(f"{r[k]:.2f} ms" if k in r else "–" for k in ("forward+backward", "adamw", "torch muon",
                                                                     "gptlab muon", "adamw (rest)")),
                     f"{cost:.2f}x", f"{ratios[-1]:.2f}" if "torch muon" in r else "–"])
    if ratios:
        last_line = f"muon step, torch/gptlab time: {min(ratios):.2f}"
        print(last_line)
    if not args.no_record:
        columns = ["shape", "forward + backward", "AdamW step", "torch Muon step", "gptlab Muon step",
                   "AdamW step of the rest", "a step with Muon / with AdamW", "torch / gptlab Muon step"]
        record("muon", {"columns": columns, "rows": rows}, last_line=last_line.strip(),
               key=f"{args.ns_dtype}-ns{args.ns_steps}",
               notes=f"batch 32 x 64, Newton-Schulz {args.ns_steps} steps in {args.ns_dtype}, median of {args.repeats}")


if __name__ == "__main__":
    main()
