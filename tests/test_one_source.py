"""Each default lives once (in its spec), the checkpoint contract is versioned, and a run resumes from its
checkpoint alone."""

import inspect
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from hydra.utils import get_method
from omegaconf import OmegaConf

from gptlab import checkpoint
from gptlab.config import DEFAULT_OPTIONS
from gptlab.data import DataConfig
from gptlab.errors import GptlabError
from gptlab.lit.optim import AdamWConfig
from gptlab.lit.schedule import WarmupCosine
from gptlab.lit.trainer import TrainerConfig
from gptlab.model import GPTConfig, SamplingConfig
from gptlab.tokenizers import TOKENIZERS

from conftest import REPO

SPECS = {"model": GPTConfig, "data": DataConfig, "trainer": TrainerConfig, "optim": AdamWConfig,
         "scheduler": WarmupCosine}
GLOBAL_GROUPS = ("experiment", "debug")  # `# @package _global_` files: they set keys of several groups


def leaves(node: dict, prefix: str = ""):
    for k, v in node.items():
        if isinstance(v, dict) and "_target_" not in v:
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def compose_train(*overrides: str):
    with initialize_config_module(config_module="gptlab.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def yaml_files(group: str):
    return sorted((REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", sorted(SPECS))
def test_group_options_state_only_what_differs_from_the_spec(group):
    spec = SPECS[group]
    defaults = {f.name: f.default for f in fields(spec)}
    defaults.update({f.name: f.default_factory() for f in fields(spec) if callable(f.default_factory)})
    for path in yaml_files(group):
        body = yaml.safe_load(path.read_text()) or {}
        body.pop("defaults", None)
        for key, value in body.items():
            if key.startswith("_"):
                continue
            assert key in defaults, f"{path.name}: {key} is not a field of {spec.__name__}"
            assert value != defaults[key], f"{path.name} restates {group}.{key}={value!r}, the default"


@pytest.mark.parametrize("path", [p for g in GLOBAL_GROUPS for p in yaml_files(g)], ids=lambda p: p.stem)
def test_recipes_state_only_what_differs_from_what_they_would_get(path):
    body = yaml.safe_load(path.read_text()) or {}
    defaults = body.pop("defaults", [])
    choices = [f"{group.split()[-1].strip('/')}={choice}" for entry in defaults
               if isinstance(entry, dict) for group, choice in entry.items()]
    # a recipe built on another (`- shakespeare_cpu`) and on levers (`- /lever/muon`): the same, without this file
    named = [e for e in defaults if isinstance(e, str) and e != "_self_"]
    choices += [f"experiment={e}" for e in named if not e.startswith("/")]
    levers = [e.removeprefix("/lever/") for e in named if e.startswith("/lever/")]
    choices += [f"lever=[{','.join(levers)}]"] if levers else []
    base = compose_train(*choices)  # the same group choices, without this file's values
    for key, value in leaves(body):
        if key.startswith("hydra."):
            continue
        assert OmegaConf.select(base, key) != value, f"{path.name} restates {key}={value!r}"


def test_instantiated_configs_restate_no_argument_default():
    for path in REPO.glob("conf/**/*.yaml"):
        for node in _target_nodes(yaml.safe_load(path.read_text()) or {}):
            try:
                params = inspect.signature(get_method(node["_target_"])).parameters
            except Exception:  # a plugin that is not installed
                continue
            for key, value in node.items():
                p = params.get(key)
                if p is not None and p.default is not inspect.Parameter.empty:
                    assert value != p.default, f"{path.name}: {node['_target_']}({key}={value!r}) is its default"


def _target_nodes(node):
    if isinstance(node, dict):
        if "_target_" in node:
            yield node
        for v in node.values():
            yield from _target_nodes(v)


def test_every_spec_field_has_a_schema():
    """What a spec holds can be set on the command line, typed; and the ConfigStore options are the specs."""
    cfg = compose_train("tokenizer=bpe")
    for group, spec in SPECS.items():
        assert {f.name for f in fields(spec)} <= set(cfg[group].keys()), group
    assert {f.name for f in fields(TOKENIZERS["bpe"].settings)} <= set(cfg.tokenizer.keys())
    with initialize_config_module(config_module="gptlab.conf", version_base="1.3"):
        gen = compose("generate", overrides=["ckpt_path=x"])
    assert {f.name for f in fields(SamplingConfig)} <= set(gen.keys())
    for (group, name), node in DEFAULT_OPTIONS.items():
        assert not (REPO / "conf" / group / f"{name}.yaml").exists(), f"{group}/{name} is defined twice"
    with pytest.raises(Exception, match="vocab_size"):
        compose_train("tokenizer=char", "tokenizer.vocab_size=3")  # char has no such setting: typed per kind


FORMAT1 = REPO / "tests" / "data" / "checkpoint_format1.ckpt"  # written by gptlab 0.1 (commit 2cb5ea6)


def test_a_format_1_checkpoint_still_loads_and_computes_the_same():
    loaded = checkpoint.load(FORMAT1)
    assert loaded.step == 4 and loaded.tokenizer.vocab_size == 65 and loaded.model.config.n_embd == 16
    logits = loaded.model(torch.tensor([loaded.tokenizer.encode("ROMEO:")]))[0]
    # what the code that wrote the file computed for this input
    assert float(logits.sum()) == pytest.approx(1.351645588874817, abs=1e-4)
    assert logits[0, -1, :5].tolist() == pytest.approx(
        [0.022645853459835052, 0.06050856411457062, -0.0017969906330108643, 0.006395347416400909,
         -0.08638344705104828], abs=1e-5)
    assert loaded.config["data"]["path"] is None and loaded.config["tokenizer"] == {"kind": "char"}


@pytest.mark.parametrize("fmt, message", [(99, "format 99, newer than this gptlab reads"),
                                          ("x", "unknown checkpoint format 'x'")])
def test_a_checkpoint_of_another_format_is_one_line(tmp_path, fmt, message):
    ckpt = torch.load(FORMAT1, weights_only=True)
    ckpt["gptlab"] = {"format": fmt}
    torch.save(ckpt, tmp_path / "x.ckpt")
    with pytest.raises(GptlabError, match=message):
        checkpoint.load(tmp_path / "x.ckpt")


def _cli(cwd: Path, *args: str, cache: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "GPTLAB_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore"}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB"):
        env.pop(inherited, None)
    return subprocess.run([sys.executable, "-m", "gptlab.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_resume_from_the_checkpoint_alone(tmp_path, cache_dir):
    """`ckpt_path=RUN` alone: the run's own model and settings, in its own folder; the first command again with
    ckpt_path= added is accepted, a change of the model's shape refused."""
    first = ["model=nano", "model.n_layer=1", "trainer.max_steps=4", "trainer.val_check_interval=2",
             "trainer.limit_val_batches=1", "data.batch_size=4", "optim.lr=3e-3", "sample_tokens=0",
             "callbacks.text_samples.max_new_tokens=5"]
    r = _cli(tmp_path, *first, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "outputs").glob("*/*")
    r = _cli(tmp_path, f"ckpt_path={run}", "trainer.max_steps=8", cache=cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((tmp_path / "outputs").glob("*/*")) == [run]  # no new run folder
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8
    assert ckpt["gptlab"]["model"]["n_layer"] == 1 and ckpt["gptlab"]["config"]["optim"]["lr"] == 3e-3
    assert "dirpath has changed" not in r.stderr
    assert json.loads((run / "result.json").read_text())["steps"] == 8

    # the first command again with ckpt_path= added, its groups accepted; only a real change of the model refused
    r = _cli(tmp_path, *first, "model.n_layer=3", f"ckpt_path={run}", cache=cache_dir)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and lines == [
        "error: model.n_layer=3 conflicts with the run being resumed (model.n_layer=1): a resumed run keeps its model "
        "and data; drop the override, or train a new run"], r.stderr
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 8  # untouched

    from conftest import make_cfg
    from gptlab.start import start

    with pytest.raises(GptlabError, match="init_from= starts a new run from trained weights, ckpt_path= resumes"):
        start(make_cfg(tmp_path / "other", cache_dir, [f"ckpt_path={run}", "init_from=gpt2"]), None)  # not its own
