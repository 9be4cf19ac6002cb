"""What LoRA saves: a fine-tuning step with low-rank adapters (finetune=lora) against full fine-tuning, at GPT-2
124M's shape (random weights: memory and speed do not depend on them).

    python scripts/bench_lora.py                          # rank 8 on all four matrices, batch 4 x 256, float32
    python scripts/bench_lora.py --shape 24,1024,16       # GPT-2 medium's (n_layer,n_embd,n_head)
    python scripts/bench_lora.py --device cuda --dtype bfloat16 --batch-size 8 --seq-len 1024
    python scripts/bench_lora.py --quality                # LoRA SFT against full SFT on the task set (~20 min)

Each kind of run is a fresh process (so its peak memory is its own): build the model, the AdamW optimizer over
what trains, `--steps` training steps after 2 of warm-up; reported: the median step time, the process's peak
resident memory over those steps above what it held before the model was built (CPU; on a GPU torch's peak
allocated memory), the parameters that train, and the size of what its checkpoint holds (the weights that train
and their optimizer state: a LoRA checkpoint keeps the adapters alone, its base is where it was). Both kinds run
twice: as a run does by default, and with model.recompute=true (activation checkpointing: what a small machine
adds to fit). Last line: `lora/full peak memory: R (model.recompute=true on both; R' without)`.

--quality: what the adapters learn, not what they cost. From one base (the first command's model,
experiment=shakespeare_cpu, or --base RUN), experiment=sft_tasks runs twice for the same time (--sft-time), with
every weight training and with finetune=lora (overrides after -- go to the LoRA run), and `gptlab eval` scores both
on the task set's held-out answers (scripts/bench_rl.py's steps). Last line: `lora - full SFT exact match: D points`.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from results import add_flag, record

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def resident_bytes(peak: bool = False) -> int:
    """This process's resident memory now, or its peak so far (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:" if peak else "VmRSS:"):
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
                          dropout=0.0, recompute=args.recompute)).to(device, dtype)
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
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else resident_bytes(peak=True) - before
    kept = adapter_state(model) if kind == "lora" else model.state_dict()
    buffer = io.BytesIO()
    torch.save({"state_dict": kept, "optimizer": optimizer.state_dict()}, buffer)
    return {"step_s": statistics.median(times), "peak_bytes": peak, "trains": trains, "total": total,
            "checkpoint_bytes": buffer.getbuffer().nbytes}


def quality(args: argparse.Namespace) -> None:
    """LoRA SFT against full SFT from the same base in the same time, judged on the held-out answers."""
    from bench_rl import compared, exact_match, prepared, trained

    out, tasks, base = prepared(args.out, args.base, "bench_lora-")
    got, minutes = {}, {}
    for kind, extra in (("full", []), ("lora", ["finetune=lora", *args.overrides])):
        _, seconds = trained("sft_tasks", out / kind, f"init_from={base}", f"data.path={tasks}",
                                   f"trainer.max_time={args.sft_time}", "sample_tokens=0", *extra)
        got[kind], minutes[kind] = exact_match(out / kind, tasks / "test.jsonl"), seconds / 60
    full, lora = got["full"], got["lora"]
    rows = compared(full, lora, ("full", "LoRA"))
    gap = (lora["exact_match"] - full["exact_match"]) * 100
    last_line = f"lora - full SFT exact match: {gap:+.1f} points"
    print(last_line)
    if not args.no_record:
        columns = ["task", f"full SFT, {minutes['full']:.1f} min ({full['step']:,} steps)",
                   f"LoRA SFT, {minutes['lora']:.1f} min ({lora['step']:,} steps)", "LoRA - full (points)"]
        record("lora_quality", {"columns": columns, "rows": rows}, last_line=last_line,
               notes="from the base given by --base" if args.base else "")


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
    ap.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)  # the child's model.recompute
    ap.add_argument("--quality", action="store_true", help="LoRA SFT against full SFT on the task set, same time")
    ap.add_argument("--base", help="--quality: a trained base run (default: train experiment=shakespeare_cpu first)")
    ap.add_argument("--out", help="--quality: folder for the runs (default: a temporary one)")
    ap.add_argument("--sft-time", default="00:00:09:00", help="--quality: trainer.max_time of each SFT run")
    ap.add_argument("overrides", nargs="*", help="--quality: overrides for the LoRA run (after --), e.g. lora.rank=16")
    add_flag(ap)
    args = ap.parse_args()
    if args.quality:
        quality(args)
        return
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    child = [a for a in sys.argv[1:] if a != "--no-record"]
    got = {}
    for recompute in (False, True):
        for kind in ("full", "lora"):  # each in its own process: peak memory is a process's
            out = subprocess.run([sys.executable, __file__, *child, "--one", kind, *["--recompute"] * recompute],
                                 check=True, capture_output=True, text=True).stdout
            got[kind, recompute] = g = json.loads(out.strip().splitlines()[-1])
            print(f"{kind:>5}{' recompute' if recompute else '':10}: step {g['step_s'] * 1000:8.0f} ms  "
                  f"peak memory {g['peak_bytes'] / 2**20:8,.0f} MiB  trains {g['trains']:>12,} of {g['total']:,} "
                  f"parameters  checkpoint {g['checkpoint_bytes'] / 2**20:8,.1f} MiB", flush=True)
    ratio = {(what, r): got["lora", r][what] / got["full", r][what]
             for what in ("step_s", "peak_bytes", "checkpoint_bytes") for r in (False, True)}
    lora = got["lora", False]
    share = lora["trains"] / lora["total"]
    print(f"lora/full step time: {ratio['step_s', False]:.2f}, with model.recompute=true "
          f"{ratio['step_s', True]:.2f} (target <= 0.8)")
    print(f"lora/full checkpoint size: {ratio['checkpoint_bytes', False]:.3f} (target <= 0.05)")
    print(f"lora trains {share:.2%} of the parameters (target <= 1%)")
    last_line = f"lora/full peak memory: {ratio['peak_bytes', True]:.2f} (model.recompute=true on both; " \
                f"{ratio['peak_bytes', False]:.2f} without)"
    print(last_line)
    if not args.no_record:
        columns = ["", "full fine-tuning", f"LoRA, rank {args.rank}", "LoRA / full"]
        rows = []
        for r, label in ((False, ""), (True, ", model.recompute=true")):
            full, lora = got["full", r], got["lora", r]
            rows += [[f"step time{label}", f"{full['step_s'] * 1000:,.0f} ms", f"{lora['step_s'] * 1000:,.0f} ms",
                      f"**{ratio['step_s', r]:.2f}**"],
                     [f"peak memory{label}", f"{full['peak_bytes'] / 2**20:,.0f} MiB",
                      f"{lora['peak_bytes'] / 2**20:,.0f} MiB", f"**{ratio['peak_bytes', r]:.2f}**"]]
        full, lora = got["full", False], got["lora", False]
        rows += [["parameters that train", f"{full['trains']:,}", f"{lora['trains']:,}", f"**{share:.2%}**"],
                 ["checkpoint (what trains + optimizer state)", f"{full['checkpoint_bytes'] / 2**20:,.1f} MiB",
                  f"{lora['checkpoint_bytes'] / 2**20:,.1f} MiB", f"**{ratio['checkpoint_bytes', False]:.3f}**"]]
        record("lora", {"columns": columns, "rows": rows}, last_line=last_line, key=f"{args.shape}-{args.dtype}",
               notes=f"shape {args.shape} (n_layer,n_embd,n_head), batch {args.batch_size} x {args.seq_len}, "
                     f"{args.dtype} on {args.device}, AdamW, median of {args.steps} steps")


if __name__ == "__main__":
    main()
