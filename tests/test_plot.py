"""`gptlab plot`: the loss curves of a real sweep's runs as one PNG, and a multirun's own summary.png."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")


def test_a_sweep_plots_its_runs_and_plot_reads_any_folder(tmp_path, cache_dir):
    env = {**os.environ, "GPTLAB_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB"):
        env.pop(inherited, None)
    args = ["-m", "model=nano", "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
            "data.batch_size=4", "sample_tokens=0", "callbacks.text_samples.max_new_tokens=5", "optim.lr=1e-3,3e-3"]
    r = subprocess.run([sys.executable, "-m", "gptlab.train", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert (sweep / "summary.png").stat().st_size > 10_000 and "curves: " in r.stdout

    r = subprocess.run([sys.executable, "-m", "gptlab", "plot", str(sweep), f"out={tmp_path / 'curves.png'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (tmp_path / "curves.png").stat().st_size > 10_000, r.stderr[-2000:]
    from gptlab.plot import runs_below

    runs = runs_below(sweep)
    assert sorted(run.label for run in runs) == ["optim.lr=0.001", "optim.lr=0.003"]
    assert all(run.series["val/loss"][0] == [3, 6] for run in runs)  # steps of the two validations

    r = subprocess.run([sys.executable, "-m", "gptlab.plot", f"dir={tmp_path / 'outputs' / 'nothing'}"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: dir=") and not (tmp_path / "plot.png").exists()
