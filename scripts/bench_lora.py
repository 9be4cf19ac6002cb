"""What LoRA saves: a fine-tuning step with low-rank adapters (finetune=lora) against full fine-tuning, at GPT-2
124M's shape (random weights: memory and speed do not depend on them).

    python scripts/bench_lora.py                          # rank 8 on all four matrices, batch 4 x 256, float32
    python scripts/bench_lora.py --shape 24,1024,16       # GPT-2 medium's (n_layer,n_embd,n_head)
    python scripts/bench_lora.py --device cuda --dtype bfloat16 --batch-size 8 --seq-len 1024

Each kind of run is a fresh process (so its peak memory is its own): build the model, the AdamW optimizer over
what trains, `--steps` training steps after 2 of warm-up; reported: the median step time, the process's peak
resident memory above what it held before the model was built (CPU; on a GPU torch's peak allocated memory), the parameters that train, and the size of what its
checkpoint holds (the weights that train and their optimizer state: a LoRA checkpoint keeps the adapters alone, its
base is where it was). Last line: `lora/full peak memory: R`.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from results import add_flag, record

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def one(kind: str, args: argparse.Namespace) -> dict:
    """One kind of fine-tuning, measured in this process."""
    from gptlab.model import GPT, GPTConfig, LoRAConfig, add_lora
    from gptlab.model.lora import adapter_state, trainable

    n_layer, n_embd, n_head = map(int, args.shape.split(","))
    before = resident_bytes()  # Python and torch themselves: the same for both kinds, not counted
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          dropout=0.0)).to(device, dtype)
    if kind == "lora":
        add_lora(model, LoRAConfig(rank=args.rank))
    trains, total = trainable(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(0, 50257, (args.batch_size, args.seq_len), device=device)
    times = []
    for step in range(args.steps + 2):
        start = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    kept = adapter_state(model) if kind == "lora" else model.state_dict()
    buffer = io.BytesIO()
    torch.save({"state_dict": kept, "optimizer": optimizer.state_dict()}, buffer)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # ru_maxrss: KiB on Linux
    return {"step_s": statistics.median(times), "peak_bytes": peak, "trains": trains, "total": total,
            "checkpoint_bytes": buffer.getbuffer().nbytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="12,768,12", help="n_layer,n_embd,n_head (default: GPT-2 124M's)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--one", choices=["full", "lora"], help=argparse.SUPPRESS)  # the child process's part
    add_flag(ap)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    child = [a for a in sys.argv[1:] if a != "--no-record"]
    got = {}
    for kind in ("full", "lora"):  # each in its own process: peak memory is a process's
        out = subprocess.run([sys.executable, __file__, *child, "--one", kind], check=True, capture_output=True,
                             text=True).stdout
        got[kind] = json.loads(out.strip().splitlines()[-1])
        g = got[kind]
        print(f"{kind:>5}: step {g['step_s'] * 1000:8.0f} ms  peak memory {g['peak_bytes'] / 2**20:8,.0f} MiB  "
              f"trains {g['trains']:>12,} of {g['total']:,} parameters  checkpoint {g['checkpoint_bytes'] / 2**20:8,.1f} MiB",
              flush=True)
    full, lora = got["full"], got["lora"]
    ratios = {"step time": lora["step_s"] / full["step_s"], "peak memory": lora["peak_bytes"] / full["peak_bytes"],
              "checkpoint": lora["checkpoint_bytes"] / full["checkpoint_bytes"]}
    share = lora["trains"] / lora["total"]
    print(f"lora/full step time: {ratios['step time']:.2f} (target <= 0.8)")
    print(f"lora/full checkpoint size: {ratios['checkpoint']:.3f} (target <= 0.05)")
    print(f"lora trains {share:.2%} of the parameters (target <= 1%)")
    last_line = f"lora/full peak memory: {ratios['peak memory']:.2f}"
    print(last_line)
    if not args.no_record:
        columns = ["", "full fine-tuning", f"LoRA, rank {args.rank}", "LoRA / full"]
        rows = [["step time", f"{full['step_s'] * 1000:,.0f} ms", f"{lora['step_s'] * 1000:,.0f} ms",
                 f"**{ratios['step time']:.2f}**"],
                ["peak memory", f"{full['peak_bytes'] / 2**20:,.0f} MiB", f"{lora['peak_bytes'] / 2**20:,.0f} MiB",
                 f"**{ratios['peak memory']:.2f}**"],
                ["parameters that train", f"{full['trains']:,}", f"{lora['trains']:,}", f"**{share:.2%}**"],
                ["checkpoint (what trains + optimizer state)", f"{full['checkpoint_bytes'] / 2**20:,.1f} MiB",
                 f"{lora['checkpoint_bytes'] / 2**20:,.1f} MiB", f"**{ratios['checkpoint']:.3f}**"]]
        record("lora", {"columns": columns, "rows": rows}, last_line=last_line, key=f"{args.shape}-{args.dtype}",
               notes=f"shape {args.shape} (n_layer,n_embd,n_head), batch {args.batch_size} x {args.seq_len}, "
                     f"{args.dtype} on {args.device}, AdamW, median of {args.steps} steps")


if __name__ == "__main__":
    main()
