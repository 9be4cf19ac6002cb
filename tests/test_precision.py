"""Precision by measurement: `trainer.precision=auto` and `dtype=auto` use bf16 only where a probe finds bf16
matmuls faster than fp32 on this device; the probe runs once per machine and is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gptlab import devices
from gptlab.eval import validator
from gptlab.train import build

from conftest import make_cfg


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """The probe's matmul timings, set by the test; counts how often it measures. The cache is in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(devices, "_speedups", {})
    times = {torch.float32: 1.0, torch.bfloat16: 1.0, "calls": 0}

    def fake(dtype):
        times["calls"] += 1
        return times[dtype]

    monkeypatch.setattr(devices, "_time_matmul", fake)
    return times


@pytest.mark.parametrize("fp32, bf16, precision", [(1.0, 0.3, "bf16-mixed"), (1.0, 12.0, "32-true"),
                                                   (1.0, 0.95, "32-true")])
def test_auto_precision_follows_the_measured_speed(probe, fp32, bf16, precision):
    probe[torch.float32], probe[torch.bfloat16] = fp32, bf16
    chosen, why = devices.auto_precision(torch.device("cpu"))
    assert chosen == precision and f"{fp32 / bf16:.2g}x" in why  # the start block says why
    assert devices.inference_dtype("auto", torch.device("cpu")) == ("bfloat16" if precision != "32-true" else "float32")
    assert devices.inference_dtype(None, torch.device("cpu")) is None  # the default: the checkpoint's own


def test_the_probe_runs_once_per_machine_and_is_kept(probe, monkeypatch, tmp_path):
    probe[torch.bfloat16] = 0.25
    assert devices.bf16_speedup(torch.device("cpu")) == 4.0
    calls = probe["calls"]
    monkeypatch.setattr(devices, "_speedups", {})  # a new process: read from the file, not measured again
    assert devices.bf16_speedup(torch.device("cpu")) == 4.0 and probe["calls"] == calls
    (key, value), = json.loads((tmp_path / "xdg/gptlab/bf16_probe.json").read_text()).items()
    assert value == 4.0 and torch.__version__ in key
    other = "SSE41" if os.environ.get("ONEDNN_MAX_CPU_ISA") != "SSE41" else "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", other)  # a setting that changes what torch runs: measured anew
    probe[torch.bfloat16] = 10.0
    assert devices.bf16_speedup(torch.device("cpu")) == 0.1 and probe["calls"] > calls


def test_the_trainer_gets_the_measured_precision(probe, tmp_path, cache_dir):
    for bf16, expected in ((0.3, "bf16-mixed"), (8.0, "32-true")):
        probe[torch.bfloat16] = bf16
        monkey_speedups = devices._speedups
        monkey_speedups.clear()
        (tmp_path / "xdg/gptlab/bf16_probe.json").unlink(missing_ok=True)
        trainer, _, _ = build(make_cfg(tmp_path / "run", cache_dir, ["trainer.precision=auto"]))
        assert trainer.precision == expected
        summary = next(c for c in trainer.callbacks if type(c).__name__ == "RunSummary")
        assert "auto: bf16 matmuls run" in summary.precision_why


def test_eval_scores_a_bf16_run_in_fp32_where_bf16_is_slow(probe, capsys):
    probe[torch.bfloat16] = 10.0
    assert validator(torch.device("cpu"), "bf16-mixed").precision == "32-true"
    assert "bf16 is slow on this cpu" in capsys.readouterr().err
    assert validator(torch.device("cpu"), "auto").precision == "32-true"
    assert validator(torch.device("cpu"), "32-true").precision == "32-true"


def test_a_cpu_without_bf16_units_is_found_slow(tmp_path):
    """The real probe, on a CPU reduced to AVX2 (as an AMD EPYC without bf16 units): bf16 loses, fp32 is chosen.
    (On such a CPU itself, the settings change nothing: the answer is the same.)"""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
           "MKL_ENABLE_INSTRUCTIONS": "AVX2", "XDG_CACHE_HOME": str(tmp_path)}
    code = "import torch; from gptlab import devices; print(devices.auto_precision(torch.device('cpu'))[0])"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "32-true"


def test_compile_auto_compiles_on_a_gpu_only(tmp_path, cache_dir):
    assert devices.auto_compile(torch.device("cuda"))[0] is True
    assert devices.auto_compile(torch.device("cpu"))[0] is False
    _, module, _ = build(make_cfg(tmp_path / "run", cache_dir, ["compile=auto"]))
    assert module.compile is False
    with pytest.raises(Exception, match="compile=maybe is not one of true, false, auto"):
        build(make_cfg(tmp_path / "run", cache_dir, ["compile=maybe"]))
