"""The lever study: experiment=ablation runs the baseline, each lever alone, the modern recipe and the recipe less
each lever, over seeds; the sweep ends in ablation.md (mean and spread over seeds, Δ against the right arm, an
honest verdict) and ablation.png."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from gptlab import ablation
from gptlab.config import composed, flat, register_configs
from gptlab.usage import train_groups

from conftest import REPO


def lists(value: str) -> list[tuple[str, ...]]:
    """'[],[a],[a,b]' -> [(), ('a',), ('a', 'b')]"""
    return [tuple(x for x in inner.split(",") if x) for inner in re.findall(r"\[([^\]]*)\]", value)]


def without_hydra(overrides: list[str]) -> dict:
    register_configs()
    cfg = OmegaConf.to_container(composed("train", overrides))
    return {k: v for k, v in flat(cfg).items() if not k.startswith("hydra")}


def test_the_study_has_every_lever_alone_the_modern_recipe_and_the_recipe_less_each():
    register_configs()
    with initialize_config_module("gptlab.conf", version_base="1.3"):  # with the hydra node: its sweep
        cfg = compose("train", ["experiment=ablation"], return_hydra_config=True)
    arms = lists(cfg.hydra.sweeper.params.lever)
    assert len(set(arms)) == len(arms) and () in arms and str(cfg.hydra.sweeper.params.seed) == "1,2"
    assert cfg.trainer.max_time is None and cfg.trainer.max_steps > 0  # one step budget for all
    levers = train_groups()["lever"][1]
    assert {(lever,) for lever in levers} <= set(arms)
    recipe = yaml.safe_load((REPO / "conf/experiment/shakespeare_cpu_modern.yaml").read_text())
    modern = tuple(d.removeprefix("/lever/") for d in recipe["defaults"] if str(d).startswith("/lever/"))
    assert modern in arms and {tuple(x for x in modern if x != gone) for gone in modern} <= set(arms)
    # the modern recipe is the baseline recipe plus that list, and the settings of its own it states
    own = set(flat({k: v for k, v in recipe.items() if k != "defaults"}))
    a, b = without_hydra(["experiment=shakespeare_cpu_modern"]), without_hydra(["experiment=shakespeare_cpu",
                                                                                  f"lever=[{','.join(modern)}]"])
    assert a.keys() == b.keys() and {k for k in a if a[k] != b[k]} == own


def rows(spec: dict[str, list[float]]) -> list[dict]:
    return [{"status": "ok", "val/loss": loss, "overrides": [f"lever=[{levers}]", f"seed={i}"], "params": 400_000,
             "steps": 100, "perf/run_tokens_per_s": 1000.0} for levers, losses in spec.items()
            for i, loss in enumerate(losses)]


def test_the_table_compares_additions_with_the_baseline_and_removals_with_the_whole(tmp_path):
    study = rows({"": [1.60, 1.62], "a": [1.50, 1.52], "b": [1.605, 1.615], "c": [1.70, 1.71],
                  "a,b,c": [1.40, 1.41], "b,c": [1.55, 1.56], "a,c": [1.40, 1.42], "a,b": [1.38, 1.39]})
    assert ablation.is_study(study) and not ablation.is_study(study[::2])  # one seed each: no study
    got = {ln.name: (round(ln.delta, 3) if ln.delta is not None else None, ln.verdict)
           for ln in ablation.lines(ablation.arms(study))}
    assert got == {"baseline": (None, ""), "+ a": (-0.1, "pays"), "+ b": (0.0, "noise"), "+ c": (0.095, "hurts"),
                   "all: a + b + c": (-0.205, "pays"), "all - a": (0.15, "pays"), "all - b": (0.005, "noise"),
                   "all - c": (-0.02, "hurts")}
    md, png = ablation.write(tmp_path, study)
    text = md.read_text()
    row = "| all - a | 1.5550 ± 0.0050 | +0.1500 (all) | pays | 1,000 (1.00x) | 0.400M | 100 | `lever=[b,c]` |"
    assert row in text
    if png is not None:
        assert png.stat().st_size > 5_000


def test_a_two_lever_recipe_reads_its_one_lever_arms_both_ways():
    names = [ln.name for ln in ablation.lines(ablation.arms(rows({"": [1.6, 1.6], "a": [1.5, 1.5], "b": [1.6, 1.6],
                                                                   "a,b": [1.4, 1.4]})))]
    assert names == ["baseline", "+ a", "+ b", "all: a + b", "all - a", "all - b"]


def test_experiment_ablation_runs_and_writes_its_table(tmp_path, cache_dir):
    env = {**os.environ, "GPTLAB_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB"):
        env.pop(inherited, None)
    args = ["experiment=ablation", "hydra.sweeper.params.lever='[],[zero_init],[muon,zero_init],[muon]'",
            "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "data.batch_size=4",
            "model.n_embd=32", "checkpoint_every=null"]
    r = subprocess.run([sys.executable, "-m", "gptlab.train", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "ablation").glob("*/*")
    table = (sweep / "ablation.md").read_text()
    assert table.count("`lever=[") == 6  # baseline, 2 additions, all, 2 removals (each one-lever arm read twice)
    assert "| all - muon |" in table and "| + zero_init |" in table and "ablation: " in r.stdout
    assert len(list(sweep.glob("*/result.json"))) == 8  # 4 arms x 2 seeds


def test_a_one_lever_recipe_is_its_addition():
    names = [ln.name for ln in ablation.lines(ablation.arms(rows({"": [1.6, 1.6], "a": [1.5, 1.5], "b": [1.6, 1.6]})))]
    assert names == ["baseline", "+ a", "+ b"]
