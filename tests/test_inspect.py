"""Looking inside a trained model: the AttentionMaps callback (TensorBoard) and gptlab.inspect (PNG, HTML,
summary), on tiny runs trained once for this module."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gptlab import inspect as gpt_inspect
from gptlab.cli import quote
from gptlab.errors import GptlabError
from gptlab.lit.callbacks import AttentionMaps
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizers import CharTokenizer
from gptlab.train import build, train

from conftest import make_cfg

SHORT_RUN = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
             "sample_tokens=0", "callbacks.text_samples.max_new_tokens=5"]
NASTY = "O Romeo, \"hi\" 'yo' 日本 🎭"  # commas, quotes, CJK, emoji: any text is a byte-level BPE prompt


@pytest.fixture(scope="module")
def char_run(tmp_path_factory, cache_dir) -> Path:
    """nano (2 layers x 2 heads, block 32), char vocabulary, validated at steps 2 and 4."""
    out = tmp_path_factory.mktemp("char") / "run"
    train(make_cfg(out, cache_dir, SHORT_RUN))
    return out


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "run"
    train(make_cfg(out, cache_dir, ["tokenizer=bpe", "tokenizer.vocab_size=300", "tokenizer.show_progress=false",
                                    *SHORT_RUN, "trainer.max_steps=2"]))
    return out


def cli(*args: str, cwd: Path, entry: str = "gptlab.inspect") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_COMMAND"):
        env.pop(inherited, None)
    return subprocess.run([sys.executable, "-m", entry, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def inspect_cfg(*overrides: str):
    with initialize_config_module(config_module="gptlab.conf", version_base="1.3"):
        return compose("inspect", overrides=list(overrides))


def page_data(html: Path) -> dict:
    text = html.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S).group(1))


# -- the callback


def test_training_writes_attention_images_at_each_validation(char_run):
    (events,) = (char_run / "tensorboard").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0})  # 0: keep every image
    acc.Reload()
    assert acc.Tags()["images"] == ["attention/layer_0", "attention/layer_1"]  # nano: 2 layers
    for tag in acc.Tags()["images"]:
        shots = acc.Images(tag)
        assert [s.step for s in shots] == [2, 4]  # each validation, not the sanity check
        assert shots[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
        assert shots[0].width > 2 * shots[0].height  # 2 heads side by side
    assert "attention/prompt/text_summary" in acc.Tags()["tensors"]  # what the rows and columns are


def test_the_callback_is_on_by_default_and_can_be_dropped(cfg_factory):
    kinds = lambda cfg: [type(c).__name__ for c in build(cfg)[0].callbacks]  # noqa: E731
    assert "AttentionMaps" in kinds(cfg_factory())
    assert "AttentionMaps" not in kinds(cfg_factory("~callbacks.attention_maps"))


@pytest.mark.parametrize("norm, attention", [("pre", "sdpa"), ("post", "explicit")])
def test_the_callback_restores_the_mode_and_skips_the_sanity_check(tmp_path, norm, attention):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=3, n_head=2, n_embd=16, norm=norm,
                          attention=attention, dropout=0.1))
    model.train()
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    val = np.arange(100, dtype=np.uint16) % 65
    trainer = SimpleNamespace(sanity_checking=True, is_global_zero=True, loggers=[logger], global_step=0,
                              datamodule=SimpleNamespace(files=SimpleNamespace(val=val)))
    module = SimpleNamespace(model=model, tokenizer=CharTokenizer([chr(48 + i) for i in range(65)]))
    callback = AttentionMaps(max_tokens=20)
    callback.on_validation_end(trainer, module)  # the sanity check: nothing
    trainer.sanity_checking, trainer.global_step = False, 7
    callback.on_validation_end(trainer, module)
    assert model.training  # back in training mode, dropout and all
    assert callback.ids == val[:20].tolist()  # max_tokens of the val split's start (block_size is 32)
    logger.experiment.flush()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert acc.Tags()["images"] == [f"attention/layer_{i}" for i in range(3)]
    assert [s.step for s in acc.Images("attention/layer_0")] == [7]


# -- gptlab.inspect through the command line


def test_inspect_writes_the_png_and_the_page_and_prints_the_summary(char_run, tmp_path):
    r = cli("inspect", f"ckpt_path={char_run}", "--prompt", "ROMEO: What light", cwd=tmp_path, entry="gptlab")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    assert out[1] == "prompt      17 char tokens: R O M E O : ␣ W h a t ␣ l i g h t"
    assert sum(line.startswith("layer ") for line in out) == 4  # one line per head: 2 layers x 2 heads
    assert "causal mask: largest weight above the diagonal = 0 (ok)" in out
    png = Path(next(line.split()[-1] for line in out if line.startswith("png ")))
    html = Path(next(line.split()[-1] for line in out if line.startswith("html ")))
    assert png.parent == html.parent == char_run / "inspect"  # beside the run's checkpoints
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = page_data(html)
    assert data["tokens"][:3] == ["R", "O", "M"] and np.array(data["maps"]).shape == (2, 2, 17, 17)
    assert len(data["top5"]) == 17


def test_inspect_takes_any_text_with_bpe(bpe_run, tmp_path):
    r = cli(f"ckpt_path={bpe_run}", f"prompt={NASTY}", f"out={tmp_path / 'maps'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    n = int(re.search(r"^prompt +(\d+) bpe tokens", r.stdout, re.M).group(1))
    (html,) = (tmp_path / "maps").glob("*.html")
    (png,) = (tmp_path / "maps").glob("*.png")
    assert png.stat().st_size > 1000
    data = page_data(html)
    assert len(data["tokens"]) == n and "<0xf0>" in data["tokens"]  # the emoji's first byte, at least
    assert "“O Romeo, &quot;hi&quot; &#x27;yo&#x27; 日本 🎭”" in html.read_text(encoding="utf-8")  # the title


@pytest.mark.parametrize("args, message", [
    (["prompt="], "error: the prompt is empty: give prompt=TEXT (or --prompt TEXT, prompt_file=FILE)"),
    (["--prompt", "ROMEO 🎭"], "error: 1 character(s) not in the char vocabulary of 65: '🎭'; "
                               "use only characters of the training text"),
])
def test_bad_input_is_one_line_and_writes_nothing(char_run, tmp_path, args, message):
    r = cli(f"ckpt_path={char_run}", *args, f"out={tmp_path / 'maps'}", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [message], r.stderr[-2000:]
    assert not (tmp_path / "maps").exists()


# -- gptlab.inspect in process: the file names, no matplotlib


def test_same_prompt_replaces_its_own_files_only(char_run, tmp_path):
    out = tmp_path / "maps"
    common = [f"ckpt_path={char_run}", f"out={out}"]
    first = gpt_inspect.run(inspect_cfg(*common, "prompt=" + quote("ROMEO:")))
    again = gpt_inspect.run(inspect_cfg(*common, "prompt=" + quote("ROMEO:")))
    other = gpt_inspect.run(inspect_cfg(*common, "prompt=" + quote("ROMEO!")))  # reads alike: the hash differs
    assert first == again and first["html"].name.startswith("best-ROMEO-")
    assert other["html"] != first["html"]
    assert len(list(out.iterdir())) == 4  # two prompts, a PNG and a page each


def test_without_matplotlib_the_page_and_summary_are_still_written(char_run, tmp_path, monkeypatch, capsys):
    for name in ["matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)  # any import of it now fails
    (tmp_path / "p.txt").write_text("KING:\n", encoding="utf-8")
    written = gpt_inspect.run(inspect_cfg(f"ckpt_path={char_run}", f"prompt_file={tmp_path / 'p.txt'}",
                                          f"out={tmp_path}"))
    assert written["png"] is None and written["html"].is_file()
    out = capsys.readouterr().out
    assert 'png         skipped: matplotlib is not installed (pip install -e ".[viz]" adds it)' in out
    assert "causal mask: largest weight above the diagonal = 0 (ok)" in out


def test_a_prompt_longer_than_the_context_or_a_file_as_out_is_one_line(char_run, tmp_path):
    with pytest.raises(GptlabError, match="the prompt is 33 tokens; the model sees at most block_size=32"):
        gpt_inspect.run(inspect_cfg(f"ckpt_path={char_run}", "prompt=" + "x" * 33, f"out={tmp_path / 'maps'}"))
    assert not (tmp_path / "maps").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(GptlabError, match="is a file: give a folder"):
        gpt_inspect.run(inspect_cfg(f"ckpt_path={char_run}", "prompt=ROMEO", f"out={tmp_path / 'file'}"))
