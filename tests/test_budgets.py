"""A run keeps its promises on any machine: progress by the clock, Ctrl-C before training leaves nothing behind,
a resumed run goes on in its own log and cache with the time it is given. Nothing here depends on how fast the
machine is: each test asserts what happened, not how much fitted in a time."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

from gptlab.cli import verbatim
from gptlab.lit.safety import Interrupted
from gptlab.train import shown, train



class Slow(L.Callback):
    """The first step takes `first` seconds longer (a silence no progress hook fills, as compiling is), every
    other step `each` longer: whatever the machine, lines by the clock have steps between them."""

    def __init__(self, first: float, each: float) -> None:
        self.first, self.each = first, each

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        time.sleep(self.first if trainer.global_step == 0 else self.each)


def test_progress_lines_come_by_the_clock_and_silences_are_filled(cfg_factory, capsys):
    train(cfg_factory("callbacks.progress_bar.every_s=0.3", f"+callbacks.slow._target_={__name__}.Slow",
                      "+callbacks.slow.first=1.5", "+callbacks.slow.each=0.05", "trainer.max_steps=30",
                      "trainer.val_check_interval=30"))
    out = capsys.readouterr().out
    assert "... taking the first step" in out  # said during the silence, by the watcher
    assert any(line.startswith("step ") and "tok/s" in line for line in out.splitlines())  # by the clock, no step count
    assert "step 30 validation" in out


def env(cache: Path) -> dict[str, str]:
    e = {**os.environ, "GPTLAB_CACHE_DIR": str(cache), "PYTHONWARNINGS": "default"}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB", "GPTLAB_COMMAND"):
        e.pop(inherited, None)
    return e


def test_ctrl_c_before_training_leaves_no_run_folder(tmp_path, shakespeare_text):
    """Ctrl-C while the data is being prepared: one line, exit 130, no empty run folder."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_text * 40)  # 45 MB: its preparation takes a while
    p = subprocess.Popen([sys.executable, "-m", "gptlab.train", "model=nano", f"data.path={corpus}",
                          "data.num_proc=1"], cwd=tmp_path, env=env(tmp_path / "cache"), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        for line in p.stdout:  # type: ignore[union-attr]
            if line.startswith("tokenizing "):
                time.sleep(0.5)
                os.killpg(p.pid, signal.SIGINT)
                break
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted by SIGINT before training began: nothing saved, its run " \
                                           "folder removed"
    assert "Traceback" not in err
    assert not (tmp_path / "outputs").exists()


def test_a_resume_goes_on_in_its_log_and_cache_with_the_time_it_is_given(tmp_path, cache_dir):
    """The first start names its log by its overrides; the resume (with other overrides) writes on in the same
    log folder, finds the token cache entry again, warns about nothing, and its trainer.max_time is its own."""
    cache = tmp_path / "cache"
    base = ["model=nano", "trainer.val_check_interval=4", "trainer.limit_val_batches=1", "data.batch_size=4",
            "sample_tokens=0", "trainer.max_time=00:00:05:00", f"paths.cache_dir={cache}"]
    first = subprocess.run([sys.executable, "-m", "gptlab.train", *base, "trainer.max_steps=4"], cwd=tmp_path,
                           env=env(cache), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    (run,) = (tmp_path / "outputs").glob("*/*")
    line = next(ln for ln in first.stdout.splitlines() if ln.startswith("tensorboard:"))
    assert shlex.split(line.split(":", 1)[1]) == ["tensorboard", "--logdir", str(next((run / "tensorboard").iterdir()))]
    again = subprocess.run([sys.executable, "-m", "gptlab.train", f"ckpt_path={run}", "trainer.max_steps=8",
                            "trainer.max_time=00:00:04:00"], cwd=tmp_path, env=env(cache), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "exists and is not empty" not in again.stderr and "tokenizing" not in again.stdout
    assert len(list(cache.iterdir())) == 1  # one token cache entry, made by the first start
    (log,) = (run / "tensorboard").iterdir()  # one log folder, both starts in it
    assert len(list(log.glob("events.*"))) == 2
    assert "steps    8, within 00:00:04:00 (DD:HH:MM:SS) for the whole run" in again.stdout  # this start's own
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 8


def test_an_interrupted_timed_run_says_how_much_time_it_had_left():
    stop = Interrupted(signal.SIGINT, 12, Path("/runs/a/checkpoints/last.ckpt"))
    text = stop.report("/runs/a", "gptlab train", time_left=75.2)
    assert "resume with:  gptlab train ckpt_path=/runs/a trainer.max_time=00:00:01:16" in text
    assert "trainer.max_time" not in stop.report("/runs/a", "gptlab train")  # a step budget: nothing to add


def test_unquoted_prompt_words_are_one_prompt():
    keys = ("prompt", "ckpt_path")
    assert verbatim(["ckpt_path=r", "--prompt", "O", "Romeo,", "Romeo!", "wherefore", "art", "thou"], keys) == \
        ["ckpt_path='r'", "prompt='O Romeo, Romeo! wherefore art thou'"]
    assert verbatim(["--prompt", "ROMEO:", "max_new_tokens=300", "top_p=0.95"], keys) == \
        ["prompt='ROMEO:'", "max_new_tokens=300", "top_p=0.95"]


def test_a_split_prompt_says_to_quote(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gptlab.generate", "ckpt_path=x", "prompt=O", "Romeo,", "Romeo"],
                       cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: Romeo,: not a key=value setting") and "in quotes" in line


def test_long_answers_are_shown_cut():
    assert shown("42") == "'42'"
    assert shown(" " * 500) == repr(" " * 60) + "... (500 characters)"
