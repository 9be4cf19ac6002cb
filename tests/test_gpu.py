"""The GPU paths, end to end through the real CLI (`pytest -m gpu`; skipped on a machine without CUDA)."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu

NANO = ["model=nano", "trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.limit_val_batches=2",
        "data.batch_size=16", "sample_tokens=20", "callbacks.text_samples.max_new_tokens=10"]


def cli(entry: str, *args: str, cwd, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTLAB_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore"}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB", "GPTLAB_COMMAND"):
        env.pop(inherited, None)
    return subprocess.run([sys.executable, "-m", entry, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory, cache_dir):
    """bf16-mixed, torch.compile and fused AdamW (the CUDA default) with gradient clipping, on one GPU."""
    cwd = tmp_path_factory.mktemp("gpu")
    r = cli("gptlab.train", "trainer=gpu", "compile=true", *NANO, cwd=cwd, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (cwd / "outputs").glob("*/*")
    return run


def test_train_on_gpu_with_bf16_compile_and_fused_adamw(gpu_run):
    ckpt = torch.load(gpu_run / "checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 20 and ckpt["gptlab"]["config"]["trainer"]["precision"] == "bf16-mixed"
    assert json.loads((gpu_run / "result.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_generate_and_eval_from_a_run_dir_on_gpu(gpu_run, tmp_path, cache_dir, device):
    r = cli("gptlab.generate", f"ckpt_path={gpu_run}", "--prompt", "ROMEO:", "max_new_tokens=30",
            f"device={device}", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:"), r.stderr[-3000:]
    r = cli("gptlab.eval", f"ckpt_path={gpu_run}", f"device={device}", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0 and "bits/char" in r.stdout, r.stderr[-3000:]


def test_resume_on_gpu(gpu_run, tmp_path, cache_dir):
    r = cli("gptlab.train", f"ckpt_path={gpu_run}", "trainer.max_steps=30", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(gpu_run / "checkpoints/last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 30


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_multi_gpu_strategies_with_one_device(tmp_path, cache_dir, strategy):
    r = cli("gptlab.train", f"trainer={strategy}", "trainer.accelerator=gpu", "trainer.devices=1", *NANO,
            cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt"))
