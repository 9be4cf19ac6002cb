"""train(cfg) in-process through Hydra's compose API, and the real CLI in subprocesses."""

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gptlab import checkpoint
from gptlab.errors import GptlabError
from gptlab.train import build, train

from conftest import REPO, nano_run


def test_train_writes_checkpoints_logs_and_returns_val_loss(cfg_factory, tmp_path, capsys):
    metrics = train(cfg_factory("trainer.max_steps=25"))  # 25: not a multiple of val_check_interval
    out = tmp_path / "run"
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "checkpoints" / "best.ckpt").is_file()
    assert math.isfinite(metrics["val/loss"]) and metrics["val/loss"] < math.log(65)
    assert metrics["val/bpc"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-5)  # char: 1 token/char
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-5)

    (event_file,) = (out / "tensorboard").glob("events.out.tfevents.*")
    ea = EventAccumulator(str(event_file), size_guidance={"tensors": 0})
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/ppl", "val/bpc", "lr/decay", "perf/tokens_per_s", "perf/mfu"} <= scalars
    assert 0 < ea.Scalars("perf/mfu")[-1].value < 1
    val_steps = [e.step for e in ea.Scalars("val/loss")]
    assert val_steps[-1] == 25 and ea.Scalars("val/loss")[-1].value == pytest.approx(metrics["val/loss"])
    assert "samples/text_summary" in ea.Tags()["tensors"]
    from tensorboard.plugins.hparams import plugin_data_pb2

    hp = ea.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"val/loss", "val/bpc"}
    assert {h.name for h in experiment.hparam_infos} >= {"model.n_layer", "optim.lr", "data.batch_size", "seed"}

    printed = capsys.readouterr().out
    assert "parameters" in printed and "best checkpoint:" in printed and "tensorboard --logdir" in printed

    # the checkpoint alone rebuilds the model and its tokenizer
    loaded = checkpoint.load(out)
    assert loaded.path.name == "best.ckpt" and loaded.tokenizer.vocab_size == 65 and loaded.step == 25
    x = torch.tensor([loaded.tokenizer.encode("ROMEO:")])
    assert loaded.model(x)[0].shape == (1, 6, 65)


@pytest.mark.parametrize("optim", ["adamw", "muon"])  # muon: two optimizers' states in one, restored exactly
def test_resumed_run_continues_where_it_stopped(cfg_factory, tmp_path, cache_dir, optim):
    common = ("trainer.val_check_interval=5", "scheduler.total_steps=20", "optim.lr=3e-3", f"optim={optim}")
    straight = train(cfg_factory(*common, "trainer.max_steps=20", out="straight"))
    train(cfg_factory(*common, "trainer.max_steps=10", out="first"))
    # resumed by the command that started it again (groups and all), with ckpt_path= and a longer max_steps added
    again = [*common, "trainer.max_steps=20", f"ckpt_path={tmp_path / 'first'}"]
    resumed = train(cfg_factory(*again, out="second"), overrides=nano_run(tmp_path / "second", cache_dir, again))
    assert resumed["val/loss"] == pytest.approx(straight["val/loss"], abs=1e-5)
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "second/checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 20
    assert a["lr_schedulers"][0]["_last_lr"] == pytest.approx(b["lr_schedulers"][0]["_last_lr"])
    for k, v in a["state_dict"].items():
        assert torch.allclose(v, b["state_dict"][k], atol=1e-5), k


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["model.n_embd=30", "model.n_head=4"], GptlabError, "not divisible by model.n_head=4"),
        (["ckpt_path=/nonexistent/last.ckpt"], GptlabError, "does not exist"),
        (["+model.n_layers=3"], GptlabError, "unknown config key model.n_layers"),
        (["data=text", "data.path=/nonexistent.txt"], GptlabError, "does not exist"),
        (["model.vocab_size=10"], GptlabError, "smaller than the tokenizer's 65"),
    ],
)
def test_bad_input_in_process(cfg_factory, overrides, error, message):
    from hydra.errors import InstantiationException

    with pytest.raises((error, InstantiationException), match=message):
        train(cfg_factory(*overrides))


def test_existing_run_dir_is_not_overwritten(cfg_factory, tmp_path):
    train(cfg_factory("trainer.max_steps=2", "trainer.val_check_interval=2"))
    before = (tmp_path / "run/checkpoints/last.ckpt").read_bytes()
    with pytest.raises(GptlabError, match="already holds a run"):
        train(cfg_factory("trainer.max_steps=2"))
    assert (tmp_path / "run/checkpoints/last.ckpt").read_bytes() == before


def cli(tmp_path: Path, *args: str, cache: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTLAB_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore", **extra_env}
    for inherited in ("HYDRA_FULL_ERROR", "GPTLAB_TRACEBACK", "GPTLAB_SWEEP_JOB"):
        env.pop(inherited, None)
    return subprocess.run([sys.executable, "-m", "gptlab", "train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


FAST = ["model=nano", "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
        "data.batch_size=4", "sample_tokens=30", "callbacks.text_samples.max_new_tokens=10"]


def test_cli_single_run_and_multirun(tmp_path, cache_dir):
    r = cli(tmp_path, *FAST, cache=cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (tmp_path / "outputs").glob("*/*")
    assert (run / "checkpoints/last.ckpt").is_file() and list((run / "tensorboard").rglob("events.*"))
    assert "step 6: val/loss" in r.stdout and f"run dir:         {run}" in r.stdout

    # a sweep in which one job cannot run (32 is not divisible by 3): it is recorded, the others go on
    r = cli(tmp_path, "-m", *FAST, "optim.lr=1e-3,3e-4", "model.n_head=2,3", "trainer.max_time=00:00:05:00",
            cache=cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs/multirun").glob("*/*")
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 4 and [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    assert float(rows[0]["val/loss"]) <= float(rows[1]["val/loss"])  # best first
    assert "not divisible" in rows[2]["error"] and "sweep of 4 jobs (2 failed)" in r.stdout
    names = sorted(p.parent.name for p in sweep.glob("*/tensorboard/*/events.*"))  # TensorBoard's run names
    assert len(names) == 2 and "optim.lr=0.0003" in names[0] and "optim.lr=0.001" in names[1], names
    assert not any("\\" in n for n in names)  # as typed, without Hydra's escapes
    assert "trainer.max_time=00:00:05:00" in r.stdout.split("sweep of 4 jobs")[1]  # in the printed summary too
    for row in rows[:2]:
        assert (sweep / row["job"] / "checkpoints/last.ckpt").is_file()
        assert list((sweep / row["job"] / "tensorboard").rglob("events.*"))
        assert "model.n_head=2" in row["overrides"] and row["best_step"] in ("3", "6") and int(row["params"]) > 0


BAD = [
    (["model.n_layr=2"], r"unknown config key model\.n_layr \(did you mean model\.n_layer\?\)"),
    (["model=smal"], r"model=smal is not an option \(did you mean small\?\): model is one of gpt1, .*nano, small"),
    (["lever=[rmsnrom]"], r"lever=rmsnrom is not an option \(did you mean rmsnorm\?\): lever is one of .*rope"),
    (["experimnt=sft_tasks"], r"unknown config key experimnt \(did you mean experiment\?\)"),
    (["model.n_embd=30", "model.n_head=4"], "not divisible"),
    (["data=text", "data.path=missing.txt"], "data file missing.txt does not exist"),
    (["ckpt_path=nowhere.ckpt"], "checkpoint nowhere.ckpt does not exist"),
    (["paths.data_dir=offline", "data.url=http://127.0.0.1:9/input.txt"], "downloading it from .* failed"),
    (["trainer=fsdp", "trainer.accelerator=cpu"], "strategy `fsdp` requires a GPU accelerator"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[a[0] for a, _ in BAD])
def test_cli_bad_input_is_one_clear_line(tmp_path, cache_dir, args, message):
    import re

    env_over = {}
    if "paths.data_dir=offline" in args:
        env_over["GPTLAB_DATA_DIR"] = ""
    old = {k: os.environ.get(k) for k in env_over}
    os.environ.update(env_over)
    try:
        r = cli(tmp_path, "model=nano", *args, cache=cache_dir)
    finally:
        for k, v in old.items():
            os.environ[k] = v  # type: ignore[assignment]
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), r.stderr
    assert not list((tmp_path / "outputs").glob("*/*/checkpoints"))


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "empty.txt is empty"),
    ("latin1.txt", "Ça va très bien".encode("latin-1") * 50, "is not UTF-8 text"),
    ("short.txt", b"a short text", r"fewer than model\.block_size\+1=33"),
])
def test_a_text_that_cannot_be_trained_on_is_one_clear_error(cfg_factory, tmp_path, name, content, message):
    """What the data says is wrong with a text (the CLI prints it as one line: test_cli_bad_input_is_one_clear_line)."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(GptlabError, match=message):
        train(cfg_factory("data=text", f"data.path={tmp_path / name}"))
    assert not (tmp_path / "run/checkpoints").exists()


def test_bpe_run_reports_bits_per_character(cfg_factory, tmp_path):
    metrics = train(cfg_factory("tokenizer=bpe", "tokenizer.vocab_size=320", "tokenizer.show_progress=false",
                                "trainer.max_steps=10"))
    loaded = checkpoint.load(tmp_path / "run")
    assert loaded.tokenizer.kind == "bpe" and loaded.tokenizer.vocab_size == 320
    # BPE tokens hold ~1.5 characters here: bits per character are fewer than bits per token
    assert metrics["val/bpc"] < 0.8 * metrics["val/loss"] / math.log(2)
    text = "ROMEO: But, soft! what light through yonder window breaks?"
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(text)) == text


def test_recipe_experiment_runs_a_few_steps(cfg_factory, tmp_path):
    metrics = train(cfg_factory("experiment=shakespeare_cpu", "trainer.max_time=null", "trainer.max_steps=3",
                                "trainer.limit_val_batches=2", "data.val_batch_size=16"))
    assert math.isfinite(metrics["val/loss"])
    assert checkpoint.load(tmp_path / "run").model.config.attention == "explicit"


def test_time_budget_stops_with_a_validation_and_annealed_lr(cfg_factory, tmp_path):
    """What happened, not how many steps fit (that is the machine's business): training stopped on time, not
    on a step count, the last step validated, and the cosine was aimed at that step, so the lr is at its floor."""
    cfg = cfg_factory("trainer.max_steps=-1", "trainer.max_time=00:00:00:05", "trainer.val_check_interval=100000",
                      "scheduler.warmup_steps=1", "optim.lr=1e-3", "scheduler.min_lr_ratio=0.1")
    started = time.monotonic()
    metrics = train(cfg, started=started)
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    steps = ckpt["global_step"]
    assert steps == metrics["steps"] >= 2  # no step budget: only the clock stopped it
    schedule = ckpt["lr_schedulers"][0]
    assert schedule["lr_lambdas"][0]["total_steps"] == steps  # the cosine was aimed at the step where it stopped
    floor, peak = 1e-4, 1e-3  # min_lr_ratio x lr, lr
    if steps >= 20:  # enough steps timed for the aim to have been right on the way (a slow machine gets fewer)
        # the lr came down to its floor: within 15% of the way, since a machine whose pace changes under other
        # work (the suite's other worker) moves the aim by a few steps between the last update and the stop
        assert schedule["_last_lr"][0] <= floor + 0.15 * (peak - floor)
    (event_file,) = (tmp_path / "run/tensorboard").glob("events.*")
    ea = EventAccumulator(str(event_file))
    ea.Reload()
    assert ea.Scalars("val/loss")[-1].step == steps  # the final step validated


def test_a_time_budget_counts_from_the_start_of_the_job(cfg_factory, tmp_path):
    """A job whose start-up ate its whole budget stops at its first timed step (the second: the first pays
    one-off costs), still validates and still writes its checkpoint: the budget is the whole job's."""
    cfg = cfg_factory("trainer.max_steps=-1", "trainer.max_time=00:00:00:30", "trainer.val_check_interval=100000",
                      "sample_tokens=0")
    metrics = train(cfg, started=time.monotonic() - 31)
    assert metrics["steps"] == 2 and math.isfinite(metrics["val/loss"])
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file()


def test_max_time_must_be_a_duration(cfg_factory):
    with pytest.raises(GptlabError, match=r"trainer.max_time=2min is not a duration DD:HH:MM:SS above zero "
                                          r"\(e.g. 00:00:02:00 for two minutes\)"):
        build(cfg_factory("trainer.max_time=2min"))


@pytest.mark.parametrize("debug", ["fast", "overfit", "profile"])
def test_debug_modes_run(cfg_factory, tmp_path, debug):
    extra = ["trainer.max_steps=40", "trainer.val_check_interval=20", "optim.lr=3e-3"] if debug == "overfit" else []
    metrics = train(cfg_factory(f"debug={debug}", *extra))
    if debug == "overfit":
        assert metrics["train/loss"] < math.log(65) - 1.0  # one batch, learnt by heart
    if debug == "profile":
        assert "FIT Profiler Report" in (tmp_path / "run" / "fit-profile.txt").read_text()


LEVERS = "lever=[rope,rmsnorm,qk_norm,swiglu,gqa,softcap,zero_init,untied,muon]"  # every one that adds an op


def test_cli_ddp_on_cpu_writes_one_run_dir(tmp_path, cache_dir):
    """Two processes over gloo: Lightning re-launches the command for rank 1 with this run's hydra.run.dir.
    With the levers of later GPTs and Muon, which DDP must carry as it carries GPT-2 and AdamW."""
    fresh_cache = tmp_path / "cache"
    r = cli(tmp_path, *FAST, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", LEVERS, cache=fresh_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("tokenizing ") == 1  # the data is prepared once, by rank 0
    (run,) = (tmp_path / "outputs").glob("*/*")  # one run dir for both ranks
    assert (run / "checkpoints/last.ckpt").is_file() and len(list((run / "tensorboard").rglob("events.*"))) == 1
    assert (run / "train_ddp_process_1.log").is_file()
    assert r.stdout.count("step 6: val/loss") == 1  # reported once, by rank 0
    assert json.loads((run / "result.json").read_text())["status"] == "ok"


def test_cli_ddp_jobs_in_a_multirun(tmp_path, cache_dir):
    """Each DDP job of a sweep runs as a run of its own (Lightning re-runs that command, not the sweep's). In
    job 0 rank 1 crashes at step 2: rank 0 then fails too (its peer is gone) or is killed by Lightning; the
    sweep records rank 1's error, the first, the job's processes are all gone, and job 1 still runs."""
    fail = ["+callbacks.fail._target_=failing_callback.FailOnRank", "+callbacks.fail.rank=1",
            "+callbacks.fail.step=2,1000"]
    r = cli(tmp_path, "-m", *FAST, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *fail,
            cache=cache_dir, PYTHONPATH=str(REPO / "tests"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["multirun"]  # no stray run dirs
    (sweep,) = (tmp_path / "outputs/multirun").glob("*/*")
    rows = {row["job"]: row for row in csv.DictReader(open(sweep / "summary.csv"))}
    assert [rows[j]["status"] for j in "01"] == ["failed", "ok"]
    assert rows["0"]["error"] == "RuntimeError: boom on rank 1"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(sweep) not in ps  # no rank of the failed job outlived it
    run = sweep / "1"
    assert (run / "checkpoints/last.ckpt").is_file() and len(list((run / "tensorboard").rglob("events.*"))) == 1
    assert (run / "train_ddp_process_1.log").is_file() and (run / ".hydra/config.yaml").is_file()
    assert "+callbacks.fail.step=1000" in (run / ".hydra/overrides.yaml").read_text()
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    assert r.stdout.count("step 6: val/loss") == 1  # the job reported once, by its rank 0


def test_compiled_run_leaves_plain_checkpoint_keys(cfg_factory, tmp_path):
    train(cfg_factory("compile=true", LEVERS, "trainer.max_steps=2", "trainer.val_check_interval=2",
                      "trainer.limit_val_batches=1", "sample_tokens=0", "callbacks.text_samples.max_new_tokens=2"))
    keys = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["state_dict"].keys()
    assert "model.transformer.wte.weight" in keys and not any("_orig_mod" in k for k in keys)
    assert checkpoint.load(tmp_path / "run").model is not None


def test_compile_on_a_cpu_without_a_compiler_is_one_line_before_anything_is_written(cfg_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(GptlabError, match=r"^compile=true on the CPU needs a C\+\+ compiler and no-such-c\+\+-compiler "
                       r"is not on the PATH: .* or set compile=false$"):
        train(cfg_factory("compile=true", "trainer.accelerator=cpu", "trainer.max_steps=2"))
    assert not (tmp_path / "run").exists()


def test_cluster_launcher_configs(tmp_path, cache_dir):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="gptlab.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8",
                                          "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)

    # submitit's local executor runs the jobs of a sweep as separate processes, as SLURM would
    r = cli(tmp_path, "-m", "hydra/launcher=submitit_local", *FAST, "optim.lr=1e-3", cache=cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs/multirun").glob("*/*")
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [row["status"] for row in rows] == ["ok"] and (sweep / "0/checkpoints/last.ckpt").is_file()


def test_optuna_search_is_seeded(tmp_path, cache_dir):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = ["hparams_search=shakespeare_optuna", "hydra.sweeper.n_trials=1", *FAST]
    trials = []
    for attempt in ("a", "b"):
        (tmp_path / attempt).mkdir()
        r = cli(tmp_path / attempt, *args, cache=cache_dir)  # hparams_search sets multirun mode itself
        assert r.returncode == 0, r.stderr[-2000:]
        (sweep,) = (tmp_path / attempt / "outputs/multirun").glob("*/*")
        rows = list(csv.DictReader(open(sweep / "summary.csv")))
        assert len(rows) == 1 and all(row["status"] == "ok" for row in rows)
        assert "best_value" in (sweep / "optimization_results.yaml").read_text()
        trials.append(sorted(row["overrides"] for row in rows))
    assert trials[0] == trials[1]  # the sampler's fixed seed: the same search proposes the same trials
    assert "optim.lr=" in trials[0][0] and "model.n_layer=" in trials[0][0]


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_adamw_trains_with_gradient_clipping(cfg_factory, monkeypatch, precision):
    """Lightning's precision plugin refuses to clip for a fused optimizer; the module clips itself."""
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, v, *a, **k: calls.append(v) or real(p, v))
    metrics = train(cfg_factory("optim.fused=true", f"trainer.precision={precision}", "trainer.max_steps=4",
                                "trainer.val_check_interval=4", "trainer.limit_val_batches=1", "sample_tokens=0"))
    assert math.isfinite(metrics["val/loss"]) and calls == [1.0] * 4  # clipped at every step, at 1.0


def test_fused_adamw_with_16_mixed_and_clipping_is_one_line(cfg_factory):
    with pytest.raises(GptlabError, match="optim.fused=true cannot clip gradients under trainer.precision=16-mixed"):
        train(cfg_factory("optim.fused=true", "trainer.precision=16-mixed"))


def test_adamw_is_fused_by_default_on_cuda_only():
    import functools

    from gptlab.lit.optim import build_optimizer

    seen = []
    factory = functools.partial(lambda params, **kw: seen.append(kw), lr=1e-3, fused=None, foreach=None)
    build_optimizer(factory, [], torch.device("cuda"), scaled=False)
    build_optimizer(factory, [], torch.device("cuda"), scaled=True)  # 16-mixed: the scaler needs it unfused
    build_optimizer(factory, [], torch.device("cpu"), scaled=False)
    assert [kw["fused"] for kw in seen] == [True, None, None]
    build_optimizer(functools.partial(factory, fused=False), [], torch.device("cuda"), scaled=False)
    assert seen[-1]["fused"] is False  # the user's choice stands
