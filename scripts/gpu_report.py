"""One command that proves a GPU machine: gptlab's GPU tests and its benchmarks, as one Markdown report.

    python scripts/gpu_report.py              # everything, ~8 minutes on one H100-class GPU
    python scripts/gpu_report.py --quick      # fewer steps and repeats, no levers/eval/serve: under 3 minutes
    python scripts/gpu_report.py --dry-run    # every step on the CPU at tiny sizes: checks this script (the suite)
    python scripts/gpu_report.py --out DIR    # where the report goes (default outputs/gpu_report/<date>_<time>)

Each step runs in its own process with its own time limit, and the report goes on when one fails:
  tests     pytest -m gpu: the GPU paths end to end through the CLI
  train     GPT-2 124M's shape, gptlab's Lightning path against a plain PyTorch loop (bf16, compile, fused
            AdamW): tokens/s, ms/step and MFU against the device's dense bf16 peak (scripts/bench_train.py)
  cli       the same model trained by `python -m gptlab.train` itself: its logged tokens/s and MFU
  generate  GPT-2 124M's shape, batch 1 and 8, bf16: gptlab against Hugging Face `generate`, with and without
            its static cache (gptlab's compiled step against the static cache) (scripts/bench_generate.py)
  levers    tokens/s of the modern recipe's levers and of Muon against the GPT-2 baseline, through the CLI
  eval      the LM Evaluation Harness adapter against the harness's own hf model (scripts/bench_eval.py)
  serve     16 streaming clients against one, at GPT-2 124M's shape (scripts/bench_serve.py)
The report (report.md) lists the machine (device, driver, CUDA, torch, lightning), each step's status, time
and figures with their targets, and for a failure its last lines; each step's whole output is in <step>.log
beside it. The summary table is printed at the end. Exit status: 0 when every step ran, 1 otherwise.
The benchmarks record their tables in results/<GPU kind>.json as they run (scripts/results.py; a dry run's go into
the report's folder instead): `python scripts/render_results.py` then puts them on the pages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
ARMS = {"baseline": "[]", "levers": "[rope,rmsnorm,qk_norm,swiglu]", "muon": "[muon]"}  # the levers step's sweep


@dataclass
class Step:
    name: str
    what: str
    argv: list[str]
    limit_s: int
    read: Callable[[str, Path], dict[str, float]]  # (its output, its work folder) -> figures
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)  # figure -> (">=", value)


@dataclass
class Outcome:
    step: Step
    status: str  # ok, failed (exit N), timed out
    seconds: float
    figures: dict[str, float]
    tail: list[str]


def number(pattern: str, text: str, group: int = 1) -> Optional[float]:
    found = re.findall(pattern, text)
    if not found:
        return None
    value = found[-1][group - 1] if isinstance(found[-1], tuple) else found[-1]
    return float(value.replace(",", ""))


def read_pytest(out: str, _: Path) -> dict[str, float]:
    counts = {k: number(rf"(\d+) {k}", out) for k in ("passed", "failed", "skipped", "error")}
    return {k: v for k, v in counts.items() if v is not None}


def read_train(out: str, _: Path) -> dict[str, float]:
    """bench_train's lines: tokens/s and MFU (against the device's peak) of the plain loop and the Lightning path."""
    figures: dict[str, float] = {}
    batch, block = number(r"batch (\d+)x(\d+)", out, 1), number(r"batch (\d+)x(\d+)", out, 2)
    for name in ("plain", "lightning"):
        rate = number(rf"{name}:\s+([\d,]+) tokens/s", out)
        if rate is None:
            continue
        figures[f"{name} tokens/s"] = rate
        if batch and block:
            figures[f"{name} ms/step"] = batch * block / rate * 1e3
        mfu = number(rf"{name}:\s+[\d,]+ tokens/s\s+MFU\s+([\d.]+)%", out)
        if mfu is not None:
            figures[f"{name} MFU %"] = mfu
    ratio = number(r"lightning/plain tokens/s ratio: ([\d.]+)", out)
    if ratio is not None:
        figures["lightning/plain"] = ratio
    return figures


def logged_rates(run: Path) -> dict[str, float]:
    """A training run's own logged tokens/s and MFU (its TensorBoard scalars): the median of the second half of
    the run, after compilation and warm-up."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = sorted({p.parent for p in run.glob("tensorboard/**/events.out.tfevents.*")})  # <run>/tensorboard/<name>
    if not logs:
        return {}
    events = EventAccumulator(str(logs[0]), size_guidance={"scalars": 0})
    events.Reload()
    figures = {}
    for tag, name, scale in (("perf/tokens_per_s", "tokens/s", 1.0), ("perf/mfu", "MFU %", 100.0)):
        if tag in events.Tags()["scalars"]:
            values = [e.value for e in events.Scalars(tag)]
            figures[name] = statistics.median(values[len(values) // 2:]) * scale
    return figures


def read_cli(out: str, work: Path) -> dict[str, float]:
    return logged_rates(work / "cli")


def read_generate(out: str, _: Path) -> dict[str, float]:
    figures = {}
    for shape, batch, cache, hf in re.findall(r"(\w+) batch (\d+), \d+ new tokens: new tokens/s\s+cache\s+([\d,]+)"
                                              r"(?:\s+hf\s+([\d,]+))?", out):
        figures[f"batch {batch} tokens/s"] = float(cache.replace(",", ""))
        if hf:
            figures[f"batch {batch} gptlab/hf"] = float(cache.replace(",", "")) / float(hf.replace(",", ""))
    return figures


def read_levers(out: str, work: Path) -> dict[str, float]:
    """Each arm's logged tokens/s, and against the baseline's (job i of the sweep is the i-th of ARMS)."""
    figures: dict[str, float] = {}
    for i, arm in enumerate(ARMS):
        rate = logged_rates(work / "levers" / str(i)).get("tokens/s")
        if rate is not None:
            figures[f"{arm} tokens/s"] = rate
            if i and figures.get("baseline tokens/s"):
                figures[f"{arm}/baseline"] = rate / figures["baseline tokens/s"]
    return figures


def read_eval(out: str, _: Path) -> dict[str, float]:
    ratio = number(r"gptlab/hf ratio: ([\d.]+)", out)
    return {} if ratio is None else {"gptlab/hf": ratio}


def read_serve(out: str, _: Path) -> dict[str, float]:
    figures = {"errors": number(r"errors: (\d+)", out), "batched/single": number(r"batched/single tokens/s: ([\d.]+)",
                                                                                  out),
               "tokens/s": number(r"clients: \d+ requests, [\d,]+ tokens in [\d.]+ s = ([\d,]+) tokens/s", out),
               "TTFT p50 ms": number(r"first token p50 (\d+) ms, p99", out),
               "TTFT p99 ms": number(r"p99 (\d+) ms", out)}
    return {k: v for k, v in figures.items() if v is not None}


def steps(mode: str, work: Path) -> list[Step]:
    """The steps, at their GPU sizes, quick sizes or (dry-run) tiny CPU sizes."""
    py, dry, quick = sys.executable, mode == "dry-run", mode == "quick"
    device = ["--device", "cpu"] if dry else ["--device", "cuda"]
    tiny_train = ["model=nano", "trainer=cpu", "trainer.max_steps=12", "data.batch_size=4", "compile=false"]
    gpu_train = ["model=gpt2", "trainer=gpu", "compile=true", "data.batch_size=16",
                 f"trainer.max_steps={100 if quick else 300}"]
    quiet = ["trainer.val_check_interval=100000", "trainer.limit_val_batches=2", "sample_tokens=0",
             "~callbacks.text_samples", "trainer.log_every_n_steps=10", "checkpoint_every=null"]
    out = [
        Step("tests", "pytest -m gpu", [py, "-m", "pytest", "-m", "gpu", "-q", "-n", "0", "-p", "no:cacheprovider",
                                         *(["tests/test_gpu.py"] if dry else [])],  # dry: one file to collect
             60 if dry else 240, read_pytest),
        Step("train", "GPT-2 124M shape: Lightning path vs plain loop (bf16, compile, fused AdamW)",
             [py, str(SCRIPTS / "bench_train.py"), *device]
             + (["--model", "nano", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--repeats", "1",
                 "--precision", "32-true"] if dry else
                ["--model", "gpt2", "--batch-size", "16", "--precision", "bf16-mixed", "--compile",
                 "--steps", "10" if quick else "30", "--warmup", "5", "--repeats", "1" if quick else "3"]),
             120 if dry else 300, read_train, {"lightning/plain": (">=", 0.95), "lightning MFU %": (">=", 45.0)}),
        Step("cli", "GPT-2 124M shape through `python -m gptlab.train`: its logged tokens/s and MFU",
             [py, "-m", "gptlab.train", *(tiny_train if dry else gpu_train), *quiet,
              f"hydra.run.dir={work / 'cli'}"], 120 if dry else 300, read_cli, {"MFU %": (">=", 45.0)}),
        Step("generate", "GPT-2 124M shape, bf16: gptlab vs Hugging Face generate (dynamic cache)",
             [py, str(SCRIPTS / "bench_generate.py"), *device]
             + (["--shapes", "small", "--new-tokens", "8", "--repeats", "1", "--dtype", "float32"] if dry else
                ["--shapes", "gpt2", "--dtype", "bfloat16", "--repeats", "2" if quick else "3"]),
             120 if dry else 240, read_generate, {"batch 1 tokens/s": (">=", 2000.0)}),
        Step("generate-static", "the same, gptlab's compiled step vs Hugging Face's static cache",
             [py, str(SCRIPTS / "bench_generate.py"), *device, *([] if dry else ["--compile"])]  # CPU: no compiling
             + (["--shapes", "small", "--new-tokens", "8", "--repeats", "1", "--dtype", "float32"] if dry else
                ["--shapes", "gpt2", "--dtype", "bfloat16", "--repeats", "2" if quick else "3"]),
             180 if dry else 300, read_generate,
             {"batch 1 tokens/s": (">=", 2000.0), "batch 1 gptlab/hf": (">=", 1.0)}),
    ]
    if quick:
        return out
    levers_dir = work / "levers"
    out += [
        Step("levers", "tokens/s of the levers and of Muon against the baseline, through the CLI (a sweep)",
             [py, "-m", "gptlab.train", "-m", *(tiny_train if dry else gpu_train[:-1]),
              "trainer.max_steps=12" if dry else "trainer.max_steps=150", *quiet,
              f"lever={','.join(ARMS.values())}", f"hydra.sweep.dir={levers_dir}"],
             240 if dry else 360, read_levers),
        Step("eval", "the LM Evaluation Harness adapter vs the harness's hf model",
             [py, str(SCRIPTS / "bench_eval.py"), *device]
             + (["--shapes", "small", "--requests", "4", "--prompts", "2", "--max-gen-toks", "4", "--repeats", "1"]
                if dry else ["--shapes", "gpt2", "--batch-size", "32"]), 120 if dry else 180, read_eval,
             {"gptlab/hf": (">=", 1.0)}),
        Step("serve", "gptlab serve: 16 streaming clients against one, GPT-2 124M shape",
             [py, str(SCRIPTS / "bench_serve.py"), *device]
             + (["--shape", "tiny", "--clients", "2", "--requests", "4", "--single", "1", "--max-tokens", "4",
                 "--batch-size", "2"] if dry else ["--shape", "gpt2", "--dtype", "bfloat16"]),
             120 if dry else 180, read_serve, {"errors": ("<=", 0.0), "batched/single": (">=", 4.0)}),
    ]
    return out


def run(step: Step, work: Path, env: dict) -> Outcome:
    log = work / f"{step.name}.log"
    start = time.perf_counter()
    with log.open("w") as f:
        try:
            p = subprocess.run(step.argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=step.limit_s)
            status = "ok" if p.returncode == 0 else f"failed (exit {p.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out ({step.limit_s} s)"
    text = log.read_text(errors="replace")
    try:
        figures = step.read(text, work)
    except Exception as e:  # a reader that cannot parse is a finding, not a crash of the report
        figures, status = {}, f"{status}; its figures unreadable ({type(e).__name__}: {e})"
    return Outcome(step, status, time.perf_counter() - start, figures, text.strip().splitlines()[-15:])


def machine() -> list[str]:
    import lightning
    import torch

    lines = [f"- date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
             f"- python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
             f"lightning {lightning.__version__}", f"- CPU: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores"]
    if torch.cuda.is_available():
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            smi = "nvidia-smi not found"
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)} ({smi})")
    else:
        lines.append("- GPU: none (CUDA not available)")
    return lines


def verdict(outcome: Outcome) -> str:
    marks = []
    for name, (op, bound) in outcome.step.targets.items():
        value = outcome.figures.get(name)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        marks.append(f"{name} {op} {bound:g}: {'met' if met else 'NOT met' if value is not None else 'n/a'}")
    return "; ".join(marks)


def shown(figures: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.2f}" if abs(v) < 100 else f"{k} {v:,.0f}" for k, v in figures.items())


def report(outcomes: list[Outcome], mode: str, total: float) -> str:
    title = {"dry-run": " (a dry run on the CPU at tiny sizes: the figures mean nothing)", "quick": " (quick)"}
    lines = [f"# gptlab GPU report{title.get(mode, '')}", "", *machine(),
             f"- total: {total:.0f} s", "", "| step | status | s | figures | targets |", "|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.step.name} | {o.status} | {o.seconds:.0f} | {shown(o.figures)} | {verdict(o)} |")
    for o in outcomes:
        lines += ["", f"## {o.step.name}: {o.step.what}", "", "```", " ".join(o.step.argv[1:]), "```"]
        if o.status != "ok":
            lines += ["", "Its last lines:", "", "```", *o.tail, "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="fewer steps and repeats; no levers, eval or serve")
    group.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes")
    ap.add_argument("--out", type=Path, default=None, help="the report's folder")
    ap.add_argument("--only", nargs="+", default=None, help="run only these steps (by name)")
    args = ap.parse_args()
    mode = "dry-run" if args.dry_run else "quick" if args.quick else "full"
    work = (args.out or REPO / "outputs" / "gpu_report" / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    if work.exists() and any(work.iterdir()):
        sys.exit(f"error: {work} is not empty: name a new folder with --out")
    work.mkdir(parents=True, exist_ok=True)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: no CUDA GPU here: run it on the GPU machine, or --dry-run to check the script on a CPU")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "GPTLAB_CACHE_DIR": str(work / "cache")}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB", "GPTLAB_COMMAND"):
        env.pop(inherited, None)
    if args.dry_run:  # tiny sizes on the CPU: figures that mean nothing stay out of results/
        env["GPTLAB_RESULTS_DIR"] = str(work / "results")
    chosen = [s for s in steps(mode, work) if args.only is None or s.name in args.only]
    outcomes, start = [], time.perf_counter()
    for step in chosen:
        print(f"[{step.name}] {step.what} (limit {step.limit_s} s) ...", flush=True)
        outcome = run(step, work, env)
        outcomes.append(outcome)
        print(f"[{step.name}] {outcome.status} in {outcome.seconds:.0f} s  {shown(outcome.figures)}", flush=True)
    text = report(outcomes, mode, time.perf_counter() - start)
    (work / "report.md").write_text(text)
    print()
    print("\n".join(line for line in text.splitlines() if line.startswith("|")))
    print(f"\nreport: {work / 'report.md'} (each step's output: {work}/<step>.log)")
    print(f"results: {env.get('GPTLAB_RESULTS_DIR') or REPO / 'results'} (python scripts/render_results.py puts them "
          "on the pages)")
    sys.exit(0 if all(o.status == "ok" for o in outcomes) else 1)


if __name__ == "__main__":
    main()
