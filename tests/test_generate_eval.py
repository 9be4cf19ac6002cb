"""gptlab.generate and gptlab.eval on a checkpoint trained once for this module."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module

from gptlab import checkpoint
from gptlab import eval as gpt_eval
from gptlab import generate as gpt_generate
from gptlab.errors import GptlabError
from gptlab.model import SamplingConfig, complete
from gptlab.model.engine import new_cache
from gptlab.tokenizers import ByteLevelBPE, TokenizerError
from gptlab.train import train

from conftest import make_cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("trained") / "run"
    train(make_cfg(out, cache_dir, ["trainer.max_steps=30", "trainer.val_check_interval=15"]))
    return out


def cfg(config_name: str, *overrides: str):
    with initialize_config_module(config_module="gptlab.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def test_generate_is_seeded_and_batched(run_dir, capsys):
    a = gpt_generate.run(cfg("generate", f"ckpt_path={run_dir}", "prompt=ROMEO:", "max_new_tokens=40",
                             "num_samples=3", "seed=7"))
    b = gpt_generate.run(cfg("generate", f"ckpt_path={run_dir}", "prompt=ROMEO:", "max_new_tokens=40",
                             "num_samples=3", "seed=7"))
    assert a == b and len(a) == 3 and all(s.startswith("ROMEO:") and len(s) == 46 for s in a)
    assert len(set(a)) > 1  # the samples of one batch differ
    assert "--- sample 3 ---" in capsys.readouterr().out


def test_greedy_streams_and_matches_without_cache(run_dir, capsys, tmp_path):
    (tmp_path / "p.txt").write_text("KING:\n")
    common = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"prompt_file={tmp_path / 'p.txt'}",
              "temperature=0", "max_new_tokens=50"]
    cached = gpt_generate.run(cfg("generate", *common))
    streamed = capsys.readouterr().out
    assert streamed.rstrip("\n") == cached[0].rstrip("\n") or streamed == cached[0] + "\n"
    assert gpt_generate.run(cfg("generate", *common, "use_cache=false")) == cached


def test_generate_in_bfloat16_runs_the_model_in_bfloat16(run_dir):
    """dtype=bfloat16 (the fast setting on CPUs with bf16 units): the weights, the KV cache and the steps in bf16."""
    loaded = checkpoint.load(run_dir, dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16} and not loaded.model.training
    common = [f"ckpt_path={run_dir}", "prompt=ROMEO:", "temperature=0", "max_new_tokens=30"]
    out = gpt_generate.run(cfg("generate", *common, "dtype=bfloat16"))
    assert len(out) == 1 and out[0].startswith("ROMEO:") and len(out[0]) == 36
    assert complete(loaded.model, loaded.tokenizer, "ROMEO:", SamplingConfig(30, temperature=0)) == [out[0][6:]]
    assert new_cache(loaded.model, 1, 8).k.dtype == torch.bfloat16  # the engine's cache follows the weights


@pytest.mark.parametrize("overrides, message", [
    (["temperature=-1"], "temperature must be >= 0"),
    (["top_p=0"], r"top_p must be in \(0, 1\]"),
    (["top_p=1.5"], r"top_p must be in \(0, 1\]"),
    (["top_k=0"], "top_k must be >= 1"),
    (["prompt=''"], "prompt is empty and this tokenizer has no start token"),
    (["dtype=int8"], "dtype=int8 is not one of auto, float32, bfloat16, float16"),
])
def test_generate_bad_input(run_dir, overrides, message):
    with pytest.raises(GptlabError, match=message):
        gpt_generate.run(cfg("generate", f"ckpt_path={run_dir}", *overrides))


def test_generate_names_unknown_characters(run_dir):
    with pytest.raises(TokenizerError, match="'€'"):
        gpt_generate.run(cfg("generate", f"ckpt_path={run_dir}", "prompt='price: 5€'"))


def test_eval_scores_what_the_run_scored_and_equals_its_logged_loss(run_dir, cache_dir, monkeypatch):
    """eval runs the LightningModule's own validation on the run's windows: the same number, not a cousin."""
    import torch

    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(cache_dir))
    res = gpt_eval.run(cfg("eval", f"ckpt_path={run_dir}"))
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    # the best-val/loss ModelCheckpoint's state (the clock's ModelCheckpoint monitors nothing)
    (state,) = [v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint") and "val/loss" in k]
    assert res["loss"] == pytest.approx(float(state["best_model_score"]), abs=1e-6)
    assert res["windows"] == 2 * 8  # the run's limit_val_batches=2 batches of data.batch_size=8
    saved = json.loads((run_dir / "checkpoints" / "eval-best-val.json").read_text())
    assert saved == res
    assert res["perplexity"] == pytest.approx(math.exp(res["loss"]), rel=1e-5)
    assert res["bpc"] == pytest.approx(res["loss"] / math.log(2), rel=1e-5)


def test_eval_whole_split_and_other_text(run_dir, tmp_path, shakespeare_text, cache_dir, monkeypatch):
    monkeypatch.setenv("GPTLAB_CACHE_DIR", str(cache_dir))
    whole = gpt_eval.run(cfg("eval", f"ckpt_path={run_dir}", "whole_split=true", "data.batch_size=512"))
    assert whole["tokens"] == (111_540 - 1) // 32 * 32  # every window of the 111,540-token val split
    assert (run_dir / "checkpoints" / "eval-best-val-all.json").is_file()
    (tmp_path / "other.txt").write_text(shakespeare_text[:20_000])
    other = gpt_eval.run(cfg("eval", f"ckpt_path={run_dir}", f"data.path={tmp_path / 'other.txt'}"))
    assert other["data"].endswith("other.txt") and other["tokens"] == (20_000 - 1) // 32 * 32
    assert (run_dir / "checkpoints" / "eval-best-other.json").is_file()


def test_eval_gives_the_lightning_modules_own_figures(run_dir, tmp_path, shakespeare_text):
    """eval runs without Lightning, on the arithmetic the LightningModule's validation uses (lit/metrics.py):
    trainer.validate on the same windows, a last partial batch included, logs the very same floats."""
    import lightning as L
    from torch.utils.data import DataLoader

    from gptlab.data import FixedWindows, encode
    from gptlab.lit import GPTLitModule

    text = shakespeare_text[-10_000:]
    (tmp_path / "tail.txt").write_text(text)
    res = gpt_eval.run(cfg("eval", f"ckpt_path={run_dir}", f"data.path={tmp_path / 'tail.txt'}", "data.batch_size=100",
                           "device=cpu"))
    assert res["windows"] == 312  # 3 batches of 100 and one of 12
    loaded = checkpoint.load(run_dir)
    tokens = encode(loaded.tokenizer, text)
    module = GPTLitModule(loaded.model.config, tokenizer=loaded.tokenizer, gpt=loaded.model,
                          val_tokens_per_char=len(tokens) / len(text))
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    (logged,) = trainer.validate(module, DataLoader(FixedWindows(tokens, 32), batch_size=100), verbose=False)
    assert [res[k] for k in ("loss", "perplexity", "bpc", "bpb")] == \
        [logged[f"val/{k}"] for k in ("loss", "ppl", "bpc", "bpb")]


def test_eval_and_generate_reject_bad_checkpoints(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(GptlabError, match="not a readable gptlab checkpoint"):
        gpt_eval.run(cfg("eval", f"ckpt_path={tmp_path / 'junk.ckpt'}"))
    with pytest.raises(GptlabError, match="does not exist"):
        gpt_generate.run(cfg("generate", f"ckpt_path={tmp_path / 'missing'}"))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(GptlabError, match="no checkpoint in"):
        gpt_generate.run(cfg("generate", f"ckpt_path={tmp_path / 'empty_run'}"))


def test_cli_generate_prints_text_and_errors_in_one_line(run_dir, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "gptlab.generate", f"ckpt_path={run_dir}", "prompt=ROMEO:",
                        "max_new_tokens=30"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:") and len(r.stdout) >= 36, r.stderr
    assert "best.ckpt (step 30)" in r.stderr
    assert not list(tmp_path.iterdir())  # generation writes nothing
    r = subprocess.run([sys.executable, "-m", "gptlab.generate", f"ckpt_path={run_dir}", "top_k=0"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: top_k must be >= 1 (or null to keep every token), got 0"]


def test_stream_decoder_holds_back_split_characters():
    tok = ByteLevelBPE.train("plain ascii text " * 20, vocab_size=260, special_tokens=[], show_progress=False)
    ids = tok.encode("é!")  # é is two bytes, no merge joins them: two tokens
    assert len(ids) == 3
    dec = tok.decoder()
    assert [dec.push(i) for i in ids] == ["", "é", "!"]
