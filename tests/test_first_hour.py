"""What a newcomer meets first: free text as typed, every bad number one line, help that applies, one front
door, and tidy runs."""

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.config import EvalConfig, GenerateConfig, to_spec
from gptlab.data import DataConfig
from gptlab.errors import GptlabError
from gptlab.lit.optim import AdamWConfig
from gptlab.lit.schedule import WarmupCosine
from gptlab.lit.trainer import TrainerConfig
from gptlab.model import GPTConfig, generate
from gptlab.tokenizers import BPEConfig
from gptlab.train import build, train

from conftest import make_cfg

TEXTS = {
    "commas": "O Romeo, Romeo! wherefore art thou",
    "apostrophe": "It's",
    "quotes": 'He said "go" and \'stay\'',
    "colon-equals": "a: b = c, d=e",
    "newlines": "ROMEO:\nBut, soft!\n",
    "backslash-dollar": "cost: $5 \\ ${not.a.key}",
    "accents": "é à ü",
    "cjk": "日本語",
    "emoji": "🎭 ok",
}


def run(entry: str, *args: str, cwd: Path, stdin: str = "", cache: Path | None = None,
        warnings: str = "ignore") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": warnings}
    if cache is not None:
        env["GPTLAB_CACHE_DIR"] = str(cache)
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB", "GPTLAB_COMMAND"):
        env.pop(inherited, None)
    return subprocess.run([sys.executable, "-m", entry, *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory, cache_dir):
    """A tiny run with a byte-level BPE: any text at all can be its prompt."""
    out = tmp_path_factory.mktemp("bpe") / "run"
    train(make_cfg(out, cache_dir, ["tokenizer=bpe", "tokenizer.vocab_size=300", "tokenizer.show_progress=false",
                                    "trainer.max_steps=2", "trainer.val_check_interval=2",
                                    "trainer.limit_val_batches=1", "sample_tokens=0"]))
    return out


@pytest.mark.parametrize("form", ["key=value", "--flag value"])
def test_prompts_are_taken_as_typed_through_the_cli(byte_run, tmp_path, form):
    text = " | ".join(TEXTS.values())  # every kind of character at once: one process per form
    args = [f"prompt={text}"] if form == "key=value" else ["--prompt", text]
    r = run("gptlab.generate", f"ckpt_path={byte_run}", *args, "max_new_tokens=3", "temperature=0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    assert r.stdout.startswith(text), r.stdout[:300]
    assert r.stdout.endswith("\n")  # the shell's prompt comes back on a line of its own


def test_prompt_from_standard_input_and_the_front_door(byte_run, tmp_path):
    text = "Line one, with: everything = 'odd' \"here\"\n日本語 🎭\n"
    r = run("gptlab", "generate", f"ckpt_path={byte_run}", "prompt_file=-", "max_new_tokens=2", cwd=tmp_path,
            stdin=text, warnings="default")
    assert r.returncode == 0 and r.stdout.startswith(text), r.stderr[-1500:]
    assert "found in sys.modules" not in r.stderr  # the command checked first, then run afresh by runpy
    r = run("gptlab", "generate", f"ckpt_path={byte_run}", "top_k=0", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: top_k must be >= 1 (or null to keep every token), got 0"]
    r = run("gptlab", "nonsense", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown command 'nonsense'")


def test_a_data_path_with_spaces_and_commas_is_taken_as_typed(tmp_path, cache_dir, shakespeare_text):
    odd = tmp_path / "my notes, v2 = final"
    odd.mkdir()
    (odd / "text.txt").write_text(shakespeare_text[:30_000])
    r = run("gptlab.train", f"data.path={odd}", "model=nano", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1", "sample_tokens=0", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "text: 26,999 train" in r.stdout or "train and" in r.stdout  # the folder's text, not Shakespeare
    assert "shakespeare:" not in r.stdout


# every numeric setting of every spec, and what it is built by
NUMERIC = [(spec, prefix, f) for spec, prefix in ((GPTConfig, "model"), (DataConfig, "data"),
                                                  (TrainerConfig, "trainer"), (AdamWConfig, "optim"),
                                                  (WarmupCosine, "scheduler"), (BPEConfig, "tokenizer"))
           for f in dataclasses.fields(spec)
           if f.type in ("int", "float", "Optional[int]", "Optional[float]", "Any")
           and (f.type != "Any" or f.name in ("val_check_interval", "limit_val_batches", "limit_train_batches",
                                              "overfit_batches"))
           and f.name not in ("max_steps",)]  # -1 is meaningful there: tested below with -7


@pytest.mark.parametrize("spec, prefix, field", NUMERIC, ids=[f"{p}.{f.name}" for _, p, f in NUMERIC])
def test_every_numeric_setting_out_of_range_is_one_line(tmp_path, spec, prefix, field):
    value = -7
    extra = ["tokenizer=bpe"] if prefix == "tokenizer" else []
    if field.name == "max_time":
        pytest.skip("not a number")
    cfg = make_cfg(tmp_path / "run", tmp_path / "cache", [*extra, f"{prefix}.{field.name}={value}"])
    with pytest.raises(GptlabError) as info:
        build(cfg)
    message = str(info.value)
    assert f"{prefix}.{field.name}" in message and "\n" not in message, message
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # nothing written


@pytest.mark.parametrize("override, message", [
    ("trainer.max_steps=-7", "trainer.max_steps must be >= 1"),
    ("trainer.precision=fp64", "trainer.precision=fp64 is not one of"),
    ("optim.betas=[0.9,1.5]", "optim.betas must be two numbers in [0, 1)"),
    ("sample_tokens=-1", "sample_tokens must be >= 0"),
    ("matmul_precision=low", "matmul_precision=low is not one of"),
    ("model.dropout=1.0", "model.dropout must be in [0, 1)"),
    ("data.val_fraction=1.5", "data.val_fraction must be in (0, 1)"),
])
def test_other_bad_values_are_one_line(tmp_path, override, message):
    with pytest.raises(GptlabError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        build(make_cfg(tmp_path / "run", tmp_path / "cache", [override]))


@pytest.mark.parametrize("spec, name, values", [
    (GenerateConfig, "generate", {"max_new_tokens": -1, "temperature": -1.0, "top_k": 0, "top_p": 1.5,
                                  "num_samples": 0}),
    (EvalConfig, "eval", {"data": {"batch_size": 0}}),
])
def test_generate_and_eval_numbers_out_of_range(spec, name, values):
    for key, bad in values.items():
        base = {"ckpt_path": "x"}
        with pytest.raises(GptlabError, match=key if not isinstance(bad, dict) else "batch_size"):
            to_spec(spec, {**base, key: bad}, name)


def test_cli_bad_value_is_one_line_and_leaves_no_run_folder(tmp_path, cache_dir):
    r = run("gptlab.train", "model=nano", "optim.lr=-1", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == ["error: optim.lr must be > 0, got -1.0"]
    assert not (tmp_path / "outputs").exists()  # no run folder for a run that never started


def help_of(monkeypatch, capsys, *argv: str) -> str:
    """What `gptlab ARGV` prints and its exit status, run in this process (the --help path starts no Hydra)."""
    from gptlab import cli
    from gptlab.__main__ import main

    monkeypatch.setattr(sys, "argv", ["gptlab", *argv])
    monkeypatch.setattr(cli, "COMMAND", cli.COMMAND)  # both are set by the call: put back afterwards
    monkeypatch.setenv("GPTLAB_COMMAND", "")
    monkeypatch.delenv("GPTLAB_COMMAND")
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:.*found in sys.modules")  # runpy re-runs an imported entry, as intended
def test_help_lists_what_each_entry_point_takes(tmp_path, monkeypatch, capsys):
    out = help_of(monkeypatch, capsys, "train", "--help")
    assert "model=nano" in out and "optim=adamw" in out
    assert "schema" not in out and "usage: gptlab train" in out
    out = help_of(monkeypatch, capsys, "generate", "--help")
    assert "usage: gptlab generate" in out and "temperature=0.8" in out
    assert "model=" not in out and "trainer" not in out and "experiment" not in out
    for line in out.splitlines():
        if line.startswith("  ") and "=" in line:
            assert len(line.split("  ", 2)[-1]) > 0  # every setting has its line
    out = help_of(monkeypatch, capsys, "eval", "-h")
    assert "whole_split=False" in out and "model=" not in out
    out = help_of(monkeypatch, capsys, "chat", "--help")
    assert "/reset" in out and "system=" in out and "max_new_tokens=500" in out  # the defaults of generate
    r = run("gptlab.generate", "ckpt_path=x", "trainer=gpu", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: python -m gptlab.generate has no option trainer: python -m gptlab.generate --help lists what it takes")


def test_debug_fast_says_what_happened(tmp_path, cache_dir):
    r = run("gptlab.train", "model=nano", "debug=fast", "data.batch_size=4", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "debug=fast writes no checkpoints" in r.stdout and "no validation ran" not in r.stdout
    assert "debug=fast keeps nothing" in r.stdout and not (tmp_path / "outputs").exists()  # no empty run folder


def test_start_block_progress_and_no_banners(tmp_path, cache_dir):
    r = run("gptlab.train", "model=nano", "trainer.max_steps=40", "trainer.val_check_interval=20",
            "trainer.limit_val_batches=1", "callbacks.progress_bar.every_n_steps=20", "sample_tokens=0",
            "data.batch_size=4", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    for head in ("model ", "data ", "device ", "steps ", "run dir "):
        assert any(line.startswith(head) for line in out.splitlines()), head
    assert "estimated:" in out and "step 20/40" in out and "tok/s" in out and "ETA" in out
    assert "available:" not in r.stderr + out and "_target_" not in out  # no banners, no config dump
    assert len(out.splitlines()) < 20
    (log,) = (tmp_path / "outputs").glob("*/*/train.log")  # the run's own log holds what it printed
    assert set(out.splitlines()) | set(r.stderr.splitlines()) <= set(log.read_text().splitlines())


def test_model_generate_in_five_lines(tmp_path, cache_dir):
    """The README's snippet: load a checkpoint and sample, for code users."""
    out = tmp_path / "run"
    train(make_cfg(out, cache_dir, ["trainer.max_steps=2", "trainer.val_check_interval=2",
                                    "trainer.limit_val_batches=1", "sample_tokens=0"]))
    import torch

    from gptlab import checkpoint

    loaded = checkpoint.load(out)
    idx = torch.tensor([loaded.tokenizer.encode("ROMEO:")])
    text = loaded.tokenizer.decode(generate(loaded.model, idx, max_new_tokens=20, top_k=10)[0].tolist())
    assert text.startswith("ROMEO:") and len(text) == 26 and math.isfinite(len(text))
