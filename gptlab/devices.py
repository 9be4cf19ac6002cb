"""Picking a torch device from a config string; what a device can do."""

from __future__ import annotations

import os
import shutil
import sys

import torch

from gptlab.errors import GptlabError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptlabError(f"device={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptlabError(f"device={name} but no CUDA GPU is available: use device=cpu")
    return device


def has_fast_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 matrices in hardware (CUDA from Ampere on; CPUs with AVX512-BF16 or
    AMX), where bf16 weights run generation about twice as fast as fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(probe() for probe in probes if probe is not None)
    return False


def check_cpu_compile() -> None:
    """torch.compile on a CPU builds C++ kernels: without a compiler it would fail at the first step."""
    cxx = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(cxx) is None:
        raise GptlabError(f"compile=true on the CPU needs a C++ compiler and {cxx} is not on the PATH: install one "
                          "(e.g. apt install g++), point CXX at it, or set compile=false")


# Dense bf16/fp16 tensor-core peaks (FLOP/s, no sparsity) from the makers' data sheets, by a name fragment of
# torch.cuda.get_device_name; MFU is measured against these. Unknown devices: a measured matmul.
DENSE_BF16_PEAKS: dict[str, float] = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12,
}
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
    import time

    n, reps = (8192, 20) if device.type == "cuda" else (1024, 5)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
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
