"""Picking a torch device from a config string; what a device can do."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from gptlab.errors import GptlabError
from gptlab.files import atomic_write


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptlabError(f"device={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptlabError(f"device={name} but no CUDA GPU is available: use device=cpu")
    return device


# Matmul shape and repeats of the bf16 probe: big enough that bf16 units show (on CPUs with AMX a 256-square
# bf16 matmul runs ~2x fp32; without bf16 units it runs 10-100x slower), small enough to take milliseconds.
PROBE_SIZE, PROBE_REPEATS, PROBE_SECONDS = 256, 10, 0.2
FAST_BF16_SPEEDUP = 1.2  # bf16 must beat fp32 by this much to be chosen: a tie is not worth the rounding
_speedups: dict[str, float] = {}


def _machine_key(device: torch.device) -> str:
    """What the probe's answer depends on: the processor, torch, its threads and the settings that cap the ISA
    its kernels use (ATen's, oneDNN's and MKL's)."""
    if device.type == "cuda":
        return f"cuda|{torch.cuda.get_device_name(device)}|{torch.__version__}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    caps = ",".join(os.environ.get(v, "") for v in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                    "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_DEFAULT_FPMATH_MODE"))
    return f"{device.type}|{cpu}|{torch.__version__}|{torch.get_num_threads()} threads|{caps}"


def bf16_speedup(device: torch.device) -> float:
    """How many times faster a bf16 matmul runs than an fp32 one on this device, measured once per machine
    (a few milliseconds; kept in ~/.cache/gptlab/bf16_probe.json, keyed by processor, torch and threads).
    What torch really runs is measured, not what the CPU flags promise: a build or a setting may not use them."""
    if device.type == "cuda":  # tensor cores from Ampere (8.0) on; torch emulates bf16 on older GPUs
        return 2.0 if torch.cuda.get_device_capability(device) >= (8, 0) else 0.5
    if device.type != "cpu":
        return 0.0  # mps and others: not measured, fp32
    key = _machine_key(device)
    if key in _speedups:
        return _speedups[key]
    path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptlab" / "bf16_probe.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known.get(key), (int, float)):
        known[key] = _time_matmul(torch.float32) / _time_matmul(torch.bfloat16)
        with contextlib.suppress(OSError):  # a read-only home: measured again next time
            atomic_write(path, lambda f: f.write(json.dumps(known, indent=1)), mode="w")
    _speedups[key] = float(known[key])
    return _speedups[key]


def _time_matmul(dtype: torch.dtype) -> float:
    """Seconds of the fastest of up to PROBE_REPEATS PROBE_SIZE-square matmuls on one CPU thread (the first one
    warms up; the fastest is the one another process on the machine disturbed least). One thread, because with
    several a busy machine keeps some of them waiting: fp32 measured 100x slower under load passed for bf16
    being fast on an AVX2-only CPU; and a matmul this small spreads unevenly over threads (bf16 1.1x to 1.9x
    fp32 with 2 threads on a Zen 4, 2.0x to 2.2x with one)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(PROBE_SIZE, PROBE_SIZE, generator=g).to(dtype) for _ in range(2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a @ b
        best, spent = math.inf, 0.0
        for _ in range(PROBE_REPEATS):
            t = time.perf_counter()
            a @ b
            took = time.perf_counter() - t
            best, spent = min(best, took), spent + took
            if spent > PROBE_SECONDS:
                break
    finally:
        torch.set_num_threads(threads)
    return max(best, 1e-9)


def lightning_device(accelerator: str) -> torch.device:
    """The device a `trainer.accelerator` setting trains on (the first one, for several)."""
    kind = {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu", "mps": "mps"}.get(str(accelerator))
    return pick_device("auto") if kind is None else torch.device(kind)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run clearly faster than fp32 here (CUDA from Ampere on; CPUs whose bf16 units torch
    uses): there bf16-mixed trains and bf16 weights generate faster; elsewhere bf16 only costs."""
    return bf16_speedup(device) >= FAST_BF16_SPEEDUP


def auto_precision(device: torch.device) -> tuple[str, str]:
    """trainer.precision=auto: (the precision, why), for the start block."""
    precision = "bf16-mixed" if has_fast_bf16(device) else "32-true"
    if device.type == "cpu":
        return precision, f"auto: bf16 matmuls run {bf16_speedup(device):.2g}x as fast as fp32 on this CPU"
    if device.type == "cuda":
        return precision, "auto: " + ("the GPU has bf16 tensor cores" if precision == "bf16-mixed" else
                                      "the GPU has no bf16 tensor cores (16-mixed is the fast choice there)")
    return precision, f"auto: fp32 on {device.type}"


# torch.compile on a CPU, measured on experiment=sft_tasks' model (2 layers x 128, batches of 64 conversations,
# 150 s runs): with AMX in bf16, 82-89k tokens/s compiled against 97-107k not (4,109 steps against 6,319); on a
# CPU reduced to AVX2, in fp32, 38-42k against 40-43k (1,385 steps against 2,276), plus 20-30 s of compiling.
# (An earlier 4-layer model gained 1.35x in bf16.) So on a CPU `auto` leaves the model as it is.


def auto_compile(device: torch.device) -> tuple[bool, str]:
    """compile=auto: (whether to torch.compile the model, why), for the start block."""
    if device.type == "cuda":
        return True, "auto: on a GPU"
    return False, f"auto: on a {device.type} it did not pay for small models"


def inference_dtype(dtype: str | None, device: torch.device) -> str | None:
    """The dtype= of generate and chat, resolved: auto is bfloat16 weights where bf16 is fast here, else float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if has_fast_bf16(device) else "float32"


def check_cpu_compile() -> None:
    """torch.compile on a CPU builds C++ kernels: without a compiler it would fail at the first step."""
    cxx = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(cxx) is None:
        raise GptlabError(f"compile=true on the CPU needs a C++ compiler and {cxx} is not on the PATH: install one "
                          "(e.g. apt install g++), point CXX at it, or set compile=false")


# Dense bf16/fp16 tensor-core peaks (FLOP/s, no sparsity) from the makers' data sheets, by a name fragment of
# torch.cuda.get_device_name; MFU is measured against these. Unknown devices: a measured matmul.
DENSE_BF16_PEAKS: dict[str, float] = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                                     "A10G": 70e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12}
_measured: dict[tuple[str, torch.dtype], float] = {}


def peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float:
    """The FLOP/s that model FLOP utilisation (MFU) is measured against on this device."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for fragment, peak in DENSE_BF16_PEAKS.items():
            if fragment in name:
                return peak
    key = (str(device), dtype)
    if key not in _measured:
        _measured[key] = measured_matmul_flops(device, dtype)
    return _measured[key]


def measured_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul: the practical peak where no data sheet figure is known."""
    n, reps = (8192, 20) if device.type == "cuda" else (1024, 5)
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
