"""Every shipped config composes, is typed, and ships with the package."""

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from gptlab.model import GPT, GPTConfig

from conftest import REPO, make_cfg


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


@pytest.mark.parametrize("experiment", groups("experiment"))
def test_every_experiment_composes(experiment, tmp_path):
    cfg = make_cfg(tmp_path, tmp_path, [f"experiment={experiment}"])
    assert cfg.trainer.max_steps > 0


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
