"""Pretrained GPT-2 in and out, through the real CLI, on a local stand-in of GPT-2's files (tests never
download): sample and evaluate it, fine-tune from it, find it by name in the Hugging Face cache, export
gptlab runs to the Hugging Face format."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omegaconf import OmegaConf

from gptlab import checkpoint
from gptlab import eval as gptlab_eval
from gptlab.errors import GptlabError
from gptlab.train import train

from conftest import make_cfg

transformers = pytest.importorskip("transformers")


def cli(entry: str, *args: str, cwd: Path, cache: Path, **env_over: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTLAB_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore", **env_over}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB", "GPTLAB_COMMAND"):
        env.pop(inherited, None)
    return subprocess.run([sys.executable, "-m", entry, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    return lines[0]


def test_sample_and_evaluate_a_pretrained_folder(hf_gpt2, tmp_path, cache_dir, shakespeare_text):
    r = cli("gptlab.generate", f"ckpt_path={hf_gpt2}", "--prompt", "The meaning of life is", "max_new_tokens=10",
            cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0 and r.stdout.startswith("The meaning of life is"), r.stderr[-2000:]
    (tmp_path / "novel.txt").write_text(shakespeare_text[:5_000])
    r = cli("gptlab.eval", f"ckpt_path={hf_gpt2}", f"data.path={tmp_path / 'novel.txt'}", cwd=tmp_path,
            cache=cache_dir)
    assert r.returncode == 0 and "bits/char" in r.stdout, r.stderr[-2000:]
    with pytest.raises(GptlabError, match="no validation split of its own: give data.path="):  # in-process: faster
        gptlab_eval.run(OmegaConf.create({"ckpt_path": str(hf_gpt2), "paths": {"cache_dir": str(cache_dir)}}))


def test_a_name_resolves_through_the_hugging_face_cache(hf_gpt2, tmp_path, cache_dir):
    """`ckpt_path=gpt2` offline: found in the cache when it is there; one line saying where to put it if not."""
    empty = tmp_path / "empty-hf"
    r = cli("gptlab.generate", "ckpt_path=gpt2", "max_new_tokens=3", cwd=tmp_path, cache=cache_dir,
            HF_HOME=str(empty), HF_HUB_OFFLINE="1")
    line = one_error_line(r)
    assert "gpt2 is not in the Hugging Face cache" in line and "put config.json, model.safetensors" in line
    # the cache's layout, as huggingface_hub leaves it after a download
    repo = tmp_path / "hf/hub/models--openai-community--gpt2"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(hf_gpt2, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text("0" * 40)
    r = cli("gptlab.generate", "ckpt_path=gpt2", "--prompt", "Hello", "max_new_tokens=3", cwd=tmp_path,
            cache=cache_dir, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    assert r.returncode == 0 and r.stdout.startswith("Hello"), r.stderr[-2000:]


def test_fine_tune_from_a_pretrained_folder_through_the_cli(hf_gpt2, tmp_path, cache_dir):
    args = [f"init_from={hf_gpt2}", "model.block_size=32", "model.dropout=0.1", "trainer.max_steps=4",
            "trainer.val_check_interval=2", "trainer.limit_val_batches=2", "data.batch_size=4", "sample_tokens=10",
            "optim.lr=3e-4"]
    r = cli("gptlab.train", *args, cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = tmp_path.glob("outputs/*/*")
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4  # a new run: step 0 to 4
    rec = ckpt["gptlab"]
    assert rec["model"]["n_layer"] == 2 and rec["model"]["n_embd"] == 32 and rec["model"]["block_size"] == 32
    assert rec["model"]["vocab_size"] == 300 and rec["config"]["init_from"] == str(hf_gpt2)
    source = checkpoint.load(hf_gpt2)
    assert rec["tokenizer"] == source.tokenizer.to_dict()  # the data was encoded with GPT-2's tokenizer
    # the weights it started from: position rows past 32 were cut, the rest kept
    first = torch.load(run / "checkpoints/best.ckpt", weights_only=True)["state_dict"]
    assert first["model.transformer.wpe.weight"].shape == (32, 32)
    # eval of the fine-tuned run finds its split again, encoded with the same tokenizer
    r = cli("gptlab.eval", f"ckpt_path={run}", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0 and "bits/char" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("extra, message", [
    (["model.n_layer=5"], "model.n_layer=5 conflicts with the model of init_from="),
    (["model=small"], "conflicts with the model of init_from="),
    (["model.block_size=128"], "model.block_size=128 is larger than the source's 64"),
    (["ckpt_path=somewhere"], "checkpoint somewhere does not exist"),
])
def test_init_from_refuses_what_does_not_fit_in_one_line(hf_gpt2, tmp_path, cache_dir, extra, message):
    r = cli("gptlab.train", f"init_from={hf_gpt2}", *extra, cwd=tmp_path, cache=cache_dir)
    assert message in one_error_line(r)
    assert not (tmp_path / "outputs").exists()


def test_init_from_a_gptlab_run(tmp_path, cache_dir):
    base = ["trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "sample_tokens=0"]
    train(make_cfg(tmp_path / "first", cache_dir, base))
    cfg = make_cfg(tmp_path / "second", cache_dir, [*base, f"init_from={tmp_path / 'first'}"])
    train(cfg, overrides=[f"init_from={tmp_path / 'first'}"])
    a = torch.load(tmp_path / "first/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "second/checkpoints/last.ckpt", weights_only=True)
    assert b["global_step"] == 3 and a["gptlab"]["model"] == b["gptlab"]["model"]
    assert not torch.equal(a["state_dict"]["model.lm_head.weight"], b["state_dict"]["model.lm_head.weight"])


@pytest.fixture(scope="module")
def char_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("char") / "run"
    train(make_cfg(out, cache_dir, ["trainer.max_steps=2", "trainer.val_check_interval=2",
                                    "trainer.limit_val_batches=1", "sample_tokens=0", "model.bias=false"]))
    return out


def test_export_loads_in_transformers_without_warnings_and_computes_the_same(char_run, tmp_path, cache_dir):
    out = tmp_path / "exported"
    r = cli("gptlab.export", f"ckpt_path={char_run}", f"out={out}", cwd=tmp_path, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= \
        {p.name for p in out.iterdir()}
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as any folder and file the user makes
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    loaded = checkpoint.load(char_run)
    text = "ROMEO:\nBut, soft! what light through yonder window breaks?"
    ids = loaded.tokenizer.encode(text)
    assert hf_tok(text)["input_ids"] == ids
    x = torch.tensor([ids[:32]])  # the model's context
    with torch.no_grad():
        assert torch.allclose(model(x).logits, loaded.model(x)[0], atol=1e-5)
    r = cli("gptlab.export", f"ckpt_path={char_run}", f"out={out}", cwd=tmp_path, cache=cache_dir)
    assert "already exists and is not empty" in one_error_line(r)


def test_export_refuses_a_post_norm_model_and_writes_nothing(tmp_path, cache_dir):
    train(make_cfg(tmp_path / "run", cache_dir, ["model.norm=post", "trainer.max_steps=1", "sample_tokens=0",
                                                  "trainer.val_check_interval=1", "trainer.limit_val_batches=1"]))
    r = cli("gptlab.export", f"ckpt_path={tmp_path / 'run'}", f"out={tmp_path / 'x'}", cwd=tmp_path, cache=cache_dir)
    assert "norm" in one_error_line(r) and not (tmp_path / "x").exists()


def test_a_damaged_pretrained_folder_is_one_line(hf_gpt2, tmp_path, cache_dir):
    broken = tmp_path / "broken"
    shutil.copytree(hf_gpt2, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    r = cli("gptlab.generate", f"ckpt_path={broken}", cwd=tmp_path, cache=cache_dir)
    assert "model.safetensors" in one_error_line(r)
    config = json.loads((hf_gpt2 / "config.json").read_text())
    shutil.copy(hf_gpt2 / "model.safetensors", broken / "model.safetensors")
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(GptlabError, match="llama"):  # in-process: the CLI's one line is the message
        checkpoint.load(broken)
