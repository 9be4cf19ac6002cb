"""Training throughput: gptlab's Lightning path against a plain PyTorch loop, same model, batches, optimizer.

Both run in this process, alternating, on the same windows of Tiny Shakespeare; each figure is the
median of several repeats after warm-up steps. MFU is measured against the peak the training run's own
`perf/mfu` uses (gptlab.devices.peak_flops): the data sheet's dense bf16 figure for known GPUs, else a large
matmul measured in the same dtype on this machine.

    python scripts/bench_train.py                      # model=small, 32-true and bf16-mixed
    python scripts/bench_train.py --model nano --steps 20
    python scripts/bench_train.py --device cuda --model gpt2 --batch-size 16 --precision bf16-mixed --compile

Last line: `lightning/plain tokens/s ratio: X.XX` (32-true; the bf16-mixed ratio is printed above it). The table
goes into results/<machine kind>.json, key the model (scripts/results.py; --no-record: not).
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from gptlab.data import RandomWindows, TokenFiles, prepare_tokens, read_text
from gptlab.data.sources import SHAKESPEARE, find_or_download
from gptlab.devices import peak_flops, pick_device
from gptlab.config import register_configs
from gptlab.lit import GPTLitModule
from gptlab.lit.optim import AdamWConfig
from gptlab.lit.schedule import WarmupCosine
from gptlab.model import GPT, GPTConfig, param_groups
from gptlab.tokenizers import tokenizer_from_dict
from results import add_flag, record

register_configs()



def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def loader(tokens, block: int, batch: int, seed: int, device: torch.device) -> DataLoader:
    return DataLoader(RandomWindows(tokens, block, batch, seed), batch_size=None, pin_memory=device.type == "cuda")


def adamw(groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    # gptlab's AdamW settings; on CUDA the fused kernel, as a tuned plain loop would use
    spec = dataclasses.asdict(AdamWConfig())
    return torch.optim.AdamW(groups, **{**spec, "fused": device.type == "cuda"})


def run_plain(cfg: GPTConfig, tokens, batch: int, steps: int, warmup: int, precision: str,
              device: torch.device, compile: bool) -> float:
    torch.manual_seed(0)
    model = GPT(cfg).to(device).train()
    opt = adamw(param_groups(model), device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warmup_steps=10, total_steps=warmup + steps))
    forward = torch.compile(model) if compile else model
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed"
                else contextlib.nullcontext())
    it = iter(loader(tokens, cfg.block_size, batch, seed=0, device=device))
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            t0 = time.perf_counter()
        x, y = (t.to(device, non_blocking=True) for t in next(it))
        with autocast:
            _, loss = forward(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    sync(device)
    return steps * batch * cfg.block_size / (time.perf_counter() - t0)


class _Clock(L.Callback):
    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.t0, self.t1 = warmup, device, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        sync(self.device)
        self.t1 = time.perf_counter()


def run_lightning(cfg: GPTConfig, tokenizer: dict, tokens, batch: int, steps: int, warmup: int,
                  precision: str, device: torch.device, compile: bool) -> float:
    torch.manual_seed(0)
    module = GPTLitModule(cfg, tokenizer=tokenizer_from_dict(tokenizer), optimizer=lambda groups: adamw(groups, device),
                          scheduler=lambda: WarmupCosine(warmup_steps=10), compile=compile)
    clock = _Clock(warmup, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator=device.type, devices=[device.index] if device.index is not None else 1,
            precision=precision, max_steps=warmup + steps, max_epochs=-1,
            gradient_clip_val=1.0, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[clock], default_root_dir=tmp,
            log_every_n_steps=10,
        )
        trainer.fit(module, train_dataloaders=loader(tokens, cfg.block_size, batch, seed=0, device=device))
    return steps * batch * cfg.block_size / (clock.t1 - clock.t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small", help="a conf/model/*.yaml name")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", nargs="+", default=["bf16-mixed", "32-true"])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model in both loops")
    ap.add_argument("--cache-dir", default=os.environ.get("GPTLAB_CACHE_DIR", "data/cache"))
    add_flag(ap)
    args = ap.parse_args()
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as gptlab.train does on CUDA: TF32

    import logging
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    path = find_or_download(SHAKESPEARE.file, SHAKESPEARE.url, SHAKESPEARE.sha256, "data")
    files = TokenFiles.open(prepare_tokens(read_text(path), "shakespeare", {"kind": "char"}, 0.1, Path(args.cache_dir)))
    with initialize_config_module(config_module="gptlab.conf", version_base="1.3"):
        model_node = compose("train", overrides=[f"model={args.model}"]).model
    cfg = GPTConfig(**{**OmegaConf.to_container(model_node), "vocab_size": files.tokenizer.vocab_size})
    flops_tok = GPT(cfg).flops_per_token()
    print(f"model={args.model}: {GPT(cfg).num_params() / 1e6:.2f}M params, batch {args.batch_size}x{cfg.block_size}, "
          f"{flops_tok / 1e6:.1f} MFLOP/token, torch {torch.__version__}, "
          + (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads")
          + (", compiled" if args.compile else ""))

    ratios, rows = {}, []
    for precision in args.precision:
        peak = peak_flops(device, torch.bfloat16 if precision.startswith("bf16") else torch.float32)
        plain, lit = [], []
        for r in range(args.repeats):
            order = ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain")
            for which in order:
                if which == "plain":
                    plain.append(run_plain(cfg, files.train, args.batch_size, args.steps, args.warmup, precision,
                                           device, args.compile))
                else:
                    lit.append(run_lightning(cfg, files.tokenizer.to_dict(), files.train, args.batch_size,
                                             args.steps, args.warmup, precision, device, args.compile))
        p, li = statistics.median(plain), statistics.median(lit)
        ratios[precision] = li / p
        for name, v in (("plain", p), ("lightning", li)):
            print(f"{precision:>10} {name:>9}: {v:9,.0f} tokens/s  MFU {v * flops_tok / peak:5.1%} "
                  f"(of the device's peak, {peak / 1e12:.2f} TFLOP/s)")
        print(f"{precision:>10} lightning/plain tokens/s ratio: {ratios[precision]:.2f}")
        rows.append([precision, *(f"{v:,.0f} tokens/s, MFU {v * flops_tok / peak:.1%}" for v in (p, li)),
                     f"{ratios[precision]:.2f}", f"{peak / 1e12:.2f} TFLOP/s"])
    last = "32-true" if "32-true" in ratios else next(iter(ratios))
    last_line = f"lightning/plain tokens/s ratio: {ratios[last]:.2f}"
    print(last_line)
    if not args.no_record:
        columns = ["precision", "plain PyTorch loop", "gptlab (Lightning)", "lightning/plain", "peak (MFU's 100%)"]
        record("train", {"columns": columns, "rows": rows}, key=args.model + ("-compile" if args.compile else ""),
               last_line=last_line,
               notes=f"model={args.model}, batch {args.batch_size}x{cfg.block_size}, median of {args.repeats}")


if __name__ == "__main__":
    main()
