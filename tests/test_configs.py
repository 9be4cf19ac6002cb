"""Every shipped config composes, is typed, and ships with the package."""

import json
import math

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from gptlab.model import GPT, GPTConfig
from gptlab.train import train

from conftest import REPO, SHAKESPEARE, make_cfg


def groups(name: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / name).glob("*.yaml"))


@pytest.mark.parametrize("model", groups("model"))
def test_every_model_config_builds(model, tmp_path):
    cfg = make_cfg(tmp_path, tmp_path, [f"model={model}"])
    c = GPTConfig(**OmegaConf.to_container(cfg.model))
    assert c.n_embd % c.n_head == 0
    if model == "gpt2":
        g = GPT(GPTConfig(**{**OmegaConf.to_container(cfg.model), "vocab_size": 50257}))
        assert round(g.num_params(non_embedding=False) / 1e6) == 124
    if model == "gpt1":
        assert c.norm == "post" and c.block_size == 512


# What a 2-core CPU needs to take one step of each recipe in seconds; everything else is the recipe's own.
SMOKE = {
    "gpt2_124m": [f"data.path={SHAKESPEARE}", "tokenizer.vocab_size=512", "model.block_size=128",
                  "data.batch_size=2", "trainer.accelerator=cpu", "compile=false",
                  "callbacks.text_samples.max_new_tokens=8", "sample_tokens=8"],
    "shakespeare_char": ["data.batch_size=8"],
    "sft_tasks": ["compile=false"],  # compiling takes longer than the one step (test_train compiles on the CPU)
}


@pytest.mark.parametrize("experiment", groups("experiment"))
def test_every_experiment_composes_as_written_and_runs(experiment, tmp_path, cache_dir, request):
    """The recipe's settings are what composes (no default masks them), and one batch of it trains."""
    paths = [f"paths.output_dir={tmp_path}", f"paths.cache_dir={cache_dir}"]
    with initialize_config_module(config_module="gptlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *paths], return_hydra_config=True)
        smoke_args = list(SMOKE.get(experiment, []))
        if experiment == "finetune_shakespeare":  # GPT-2's real weights: a local stand-in of the same layout
            smoke_args += [f"init_from={request.getfixturevalue('hf_gpt2')}", "model.block_size=64",
                           "trainer.accumulate_grad_batches=1"]
        if experiment in ("sft_tasks", "rl_tasks"):  # scripts/make_tasks.py's data: a few conversations alike
            lines = [json.dumps({"messages": [{"role": "user", "content": f"What is {k} + 1?"},
                                              {"role": "assistant", "content": str(k + 1)}]}) for k in range(20)]
            (tmp_path / "tasks.jsonl").write_text("\n".join(lines) + "\n")
            smoke_args += [f"data.path={tmp_path / 'tasks.jsonl'}"]
        smoke = compose("train", overrides=[f"experiment={experiment}", *paths, "debug=fast",
                                            "callbacks.progress_bar.mode=lines", *smoke_args])
    recipe = yaml.safe_load((REPO / "conf/experiment" / f"{experiment}.yaml").read_text())
    for entry in recipe.pop("defaults", []):  # "override /model: gpt2" -> the model group's choice
        if not isinstance(entry, dict):
            continue  # _self_
        ((group, choice),) = entry.items()
        assert cfg.hydra.runtime.choices[group.split()[-1].strip("/")] == choice
    for key, value in leaves(recipe):
        if not key.startswith("hydra."):  # how a sweep runs its jobs (experiment=ablation): tests/test_ablation.py
            assert OmegaConf.select(cfg, key) == value, key

    metrics = train(smoke, overrides=smoke_args)
    assert math.isfinite(metrics["rl/loss" if experiment == "rl_tasks" else "train/loss"]) and metrics["steps"] == 1


def leaves(node: dict, prefix: str = ""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("trainer", groups("trainer"))
def test_every_trainer_config_composes(trainer, tmp_path):
    from hydra.utils import instantiate

    cfg = make_cfg(tmp_path, tmp_path, [f"trainer={trainer}"])
    if trainer in ("default", "cpu"):
        assert instantiate(cfg.trainer, logger=False).max_steps == 20


def test_typed_schema_rejects_wrong_types(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        make_cfg(tmp_path, tmp_path, ["model.n_layer=four"])
    with pytest.raises(ConfigCompositionException):
        make_cfg(tmp_path, tmp_path, ["trainer.max_stepz=3"])


def test_every_config_folder_ships_in_the_package():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = set(pyproject["tool"]["setuptools"]["packages"])
    folders = {p.name for p in (REPO / "conf").iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert {f"gptlab.conf.{f}" for f in folders} <= packages


def test_generate_and_eval_configs_compose():
    with initialize_config_module(config_module="gptlab.conf", version_base="1.3"):
        g = compose(config_name="generate", overrides=["ckpt_path=x"])
        e = compose(config_name="eval", overrides=["ckpt_path=x", "data.path=t.txt"])
    assert g.temperature == 0.8 and e.data.path == "t.txt"
