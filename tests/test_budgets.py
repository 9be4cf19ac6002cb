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
import pytest
import torch

from gptlab import cli, runlog
from gptlab.cli import verbatim
from gptlab.errors import GptlabError
from gptlab.lit.callbacks import EndWork, TimeBudget
from gptlab.lit.safety import Interrupted
from gptlab.rundir import RunDir
from gptlab.train import shown, train


class Slow(L.Callback):
    """The first step takes `first` seconds longer (a silence no progress hook fills, as compiling is), every
    other step `each` longer: whatever the machine, lines by the clock have steps between them."""

    def __init__(self, first: float, each: float) -> None:
        self.first, self.each = first, each

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        time.sleep(self.first if trainer.global_step == 0 else self.each)


def test_progress_lines_come_by_the_clock_and_silences_are_filled(cfg_factory, tmp_path, capsys, monkeypatch):
    """... and the run's log holds all it printed; a final validation the budget cannot afford ends early."""
    monkeypatch.setattr(TimeBudget, "cuts", lambda self, now, done, work: True)  # as if the time ran out
    train(cfg_factory("callbacks.progress_bar.every_s=0.3", f"+callbacks.slow._target_={__name__}.Slow",
                      "+callbacks.slow.first=1.5", "+callbacks.slow.each=0.05", "trainer.max_steps=30",
                      "trainer.val_check_interval=30", "trainer.max_time=00:00:10:00"))
    printed = capsys.readouterr()
    out = printed.out
    assert "... taking the first step" in out  # said during the silence, by the heartbeat
    assert any(line.startswith("step ") and "tok/s" in line for line in out.splitlines())  # by the clock, no step count
    assert "step 30 validation" in out and "(over 1 of 2 batches: the time budget)" in out
    log = RunDir(tmp_path / "run").output_log.read_text().splitlines()
    assert set(out.splitlines()) | set(printed.err.splitlines()) <= set(log)  # everything, stdout and stderr
    for line in ("model ", "run dir ", "... taking the first step", "step 30: val/loss", "best checkpoint:",
                 "tensorboard:"):  # the start block, progress, the end lines
        assert any(ln.startswith(line) for ln in log), line


def test_the_run_log_keeps_stdout_stderr_and_the_error_line(tmp_path, monkeypatch):
    monkeypatch.delenv("GPTLAB_TRACEBACK", raising=False)
    path = tmp_path / "run" / "train.log"
    with pytest.raises(GptlabError):
        with runlog.kept(path, since=time.monotonic(), words=cli.last_words):
            print("said before the run folder exists")
            path.parent.mkdir()
            print("to stderr", file=sys.stderr)
            raise GptlabError("optim.lr must be > 0, got -1.0")
    assert path.read_text().splitlines() == ["said before the run folder exists", "to stderr",
                                             "error: optim.lr must be > 0, got -1.0"]
    with runlog.kept(path, since=time.monotonic()):  # a resume goes on in the same file
        print("resumed")
    assert path.read_text().splitlines()[-2:] == ["error: optim.lr must be > 0, got -1.0", "resumed"]
    with runlog.kept(tmp_path / "rank1" / "train.log", since=time.monotonic(), write=False):
        (tmp_path / "rank1").mkdir()
        print("a DDP rank other than 0")
    with runlog.kept(tmp_path / "never" / "train.log", since=time.monotonic()):
        print("a job that made no run folder")
    assert list((tmp_path / "rank1").iterdir()) == [] and not (tmp_path / "never").exists()
    assert not isinstance(sys.stdout, runlog._Tee) and runlog.heartbeat() is None  # all put back


def test_redrawn_lines_reach_the_file_whole():
    t = [0.0]
    lines = runlog.Lines(every_s=10, clock=lambda: t[0])
    assert lines.feed("\rstep 1 |#  |") == [] and lines.feed("\rstep 2 |## |") == []
    t[0] = 12.0  # step 2's bar stood for a while: kept, once
    assert lines.feed("\rstep 3 |###|") == ["step 2 |## |"] and lines.feed("\rstep 3 |###|") == []
    assert lines.feed("\rstep 4 |####|\n") == ["step 4 |####|"]
    assert lines.feed("half ") == [] and lines.feed("and half\nnext\r\n") == ["half and half", "next"]
    assert lines.feed("\x1b[31mred\x1b[0m\x1b[A\n\n") == ["red", ""]
    assert lines.feed("\ra bar never ended") == [] and lines.rest() == ["a bar never ended"]


def test_silences_are_filled_from_the_start_with_what_is_under_way():
    t = [0.0]
    beat = runlog.Heartbeat(since=95.0, every_s=10, clock=lambda: t[0])  # the process started at 95
    assert beat.due(104.9) is None
    assert beat.due(105.0) == "... starting up and preparing the data (10s)"  # imports and data: no line yet
    t[0] = 106.0
    beat.say("building the model")
    beat.left = lambda: 12.4
    assert beat.due(116.0) == "... building the model (10s; 12s of the time budget left)"
    beat.heard()  # something was printed at 106
    assert beat.due(115.9) is None
    t[0] = 116.5
    beat.say("step 170 under way")  # steps flowing: the progress line by the clock is theirs to print
    assert beat.due(117.0) is None and beat.due(117.5) == "... step 170 under way (1s; 12s of the time budget left)"


# a short run of model=small on a busy 2-core CPU: 4 s steps, a validation of 14 batches of 64 x 128
SMALL = EndWork(val_tokens=14 * 64 * 128, batch_tokens=64 * 128, params=4_760_000, text_tokens=300, end_tokens=500,
                cpu=True)


def paced(budget: TimeBudget, step_s: float, steps: int, start: float = 0.0) -> float:
    """Steps of step_s seconds from `start`, as TimeBudget sees them end; the clock after the last."""
    for i in range(steps + 1):
        budget.paced(start + i * step_s, i)
    return start + steps * step_s


def test_the_end_reserve_never_exceeds_its_share_of_the_budget():
    budget = TimeBudget("00:00:00:40", started=0.0)
    now = paced(budget, 4.0, 2, start=10.0)
    assert budget.step_s == pytest.approx(4.0)
    assert budget.end_s(SMALL) > 10.0  # estimated from a slow pace: more than a quarter of 40 s
    assert budget.reserve_s(SMALL) == pytest.approx(TimeBudget.RESERVE_SHARE * 40)
    assert not budget.stops(now, SMALL)  # 40 - 18 - 10 leaves 12 s: 3 more steps
    assert budget.stops(27.0, SMALL)  # 40 - 27 - 10 leaves 3 s, less than a step
    for budget_s, step_s in ((1, 0.01), (40, 0.5), (40, 30.0), (600, 2.0), (86_400, 0.05)):
        budget = TimeBudget(f"00:00:00:{budget_s:02d}" if budget_s < 60 else
                            f"00:{budget_s // 3600:02d}:{budget_s % 3600 // 60:02d}:00", started=0.0)
        paced(budget, step_s, 3)
        budget.timed_round(budget_s)  # even a validation as long as the whole budget
        assert budget.reserve_s(SMALL) <= TimeBudget.RESERVE_SHARE * budget_s + 1e-9


def test_the_end_estimate_follows_the_pace_and_what_was_timed():
    budget = TimeBudget("00:01:00:00", started=0.0)
    now = paced(budget, 0.1, 100)
    estimated = budget.end_s(SMALL)
    assert estimated == pytest.approx(budget.reserve_s(SMALL))  # a long budget affords its estimate
    budget.validation_began(now)
    budget.timed_round(3.0)  # the validation, its sample and checkpoints as they took: it replaces the estimate
    timed = budget.end_s(SMALL)
    assert timed != pytest.approx(estimated) and timed > 3.0
    now = paced(budget, 0.2, 50, start=now + 3.0)  # the machine gets twice as busy for 10 s
    assert budget.step_s > 0.16  # the pace of about the last 10 s
    assert budget.end_s(SMALL) > timed + 0.5 * 3.0  # the timed validation, at the slower pace


def test_a_final_validation_stops_where_the_budget_ends():
    budget = TimeBudget("00:00:00:40", started=0.0)
    paced(budget, 4.0, 5)
    budget.validation_began(20.0)
    after = budget.after_validation_s(SMALL, sample=False)  # the checkpoints, the end sample and the exit
    assert budget.after_validation_s(SMALL) > after  # its TensorBoard sample is left out where time is short
    assert 40.0 - 21.0 - after > 1.0 and not budget.cuts(21.0, 1, SMALL)  # a batch in 1 s, time for more
    assert not budget.cuts(40.0 - after - 2.0, 8, SMALL)  # 8 batches in ~8 s: 2 s left, time for one more
    assert budget.cuts(40.0 - after - 0.5, 8, SMALL)  # half a batch's time left


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
    log = RunDir(run).output_log.read_text()  # both starts, one after the other, in the run's own log
    assert log.index("steps    4, within") < log.index("steps    8, within") and log.count("best checkpoint:") == 2
    assert [p.name for p in run.glob("*.log")] == [RunDir(run).output_log.name]  # Hydra's job log, the same file
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
