"""The top floor: one object knows a run's folder, the specs say what a resume may change, Lightning's private
internals are read in one adapter only, every default can be found from --help, and no module imports in a
circle."""

from __future__ import annotations

import ast
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import LightningEnvironment

from gptlab.errors import GptlabError
from gptlab.lit.internals import cluster_environment
from gptlab.rundir import RunDir, find_checkpoint
from gptlab.start import fixed_on_resume
from gptlab.usage import group_help, train_help

from conftest import REPO


def test_the_run_folder_is_where_the_checkpoint_callbacks_write(cfg_factory, tmp_path):
    cfg = cfg_factory()
    run = RunDir(Path(cfg.paths.output_dir))
    best = instantiate(cfg.callbacks.model_checkpoint)
    clock = instantiate(cfg.callbacks.clock_checkpoint)
    assert Path(best.dirpath) == Path(clock.dirpath) == run.checkpoints
    assert f"{best.filename}{best.FILE_EXTENSION}" == run.best.name
    assert f"{clock.filename}{clock.FILE_EXTENSION}" == f"{best.CHECKPOINT_NAME_LAST}{best.FILE_EXTENSION}" == run.last.name
    assert RunDir.of(run.best) == RunDir.of(run.checkpoints) == RunDir.of(run.path) == run
    assert Path(cfg.logger.save_dir) / cfg.logger.name == run.logs


def test_the_checkpoint_of_a_run(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(GptlabError, match="does not exist"):
        find_checkpoint(run.path)
    run.checkpoints.mkdir(parents=True)
    with pytest.raises(GptlabError, match="no checkpoint in"):
        find_checkpoint(run.path)
    run.last.write_bytes(b"")
    assert find_checkpoint(run.path) == run.last
    run.best.write_bytes(b"")
    assert find_checkpoint(run.path) == run.best and find_checkpoint(run.path, last_first=True) == run.last
    assert find_checkpoint(run.checkpoints) == run.best and find_checkpoint(run.last) == run.last


def test_what_a_resume_keeps_is_declared_by_the_specs():
    fixed = set(fixed_on_resume())
    assert {"model.n_layer", "model.n_embd", "model.vocab_size", "data.path", "data.val_fraction", "tokenizer",
            "init_from"} <= fixed
    assert not {"model.dropout", "model.attention", "data.batch_size"} & fixed


def test_the_one_private_read_of_lightning_still_works():
    """If this fails, a Lightning upgrade moved what gptlab.lit.internals reads: fix it there (and the pin)."""
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    assert isinstance(cluster_environment(trainer), LightningEnvironment)


def test_private_lightning_names_appear_in_the_adapter_only():
    private = ("_accelerator_connector", "_save_last_checkpoint", "_monitor_candidates", "_last_global_step_saved",
               "_get_file_writer")
    for f in (REPO / "gptlab").rglob("*.py"):
        if f.name != "internals.py":
            assert not [p for p in private if p in f.read_text()], f


def test_help_shows_every_option_of_a_group_with_its_keys():
    text = group_help("model")
    for option in ("nano", "small", "gpt2"):
        assert f"model={option}" in text
    assert "model=small  (the default)" in text and "  model.n_layer=6" in text and "  model.n_layer=2" in text
    recipe = group_help("experiment")
    assert "experiment=shakespeare_cpu" in recipe and "  trainer.max_time=00:00:02:00" in recipe
    assert "--help GROUP" in train_help() and group_help("nope").startswith("error: no group 'nope'")


def imports(path: Path, package: str) -> set[str]:
    """The gptlab modules a file imports, anywhere in it (inside functions too), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gptlab"):
            out |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gptlab")}
    return out


def test_no_module_imports_in_a_circle():
    files = {".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): f
             for f in (REPO / "gptlab").rglob("*.py")}
    graph = {m: {i for i in imports(f, m) if i in files and i != m} for m, f in files.items()}
    for m in graph:  # a package's __init__ re-exports its modules: an edge into a package is an edge into them
        graph[m] = {i for i in graph[m] if not (m.startswith(i + ".") and (REPO / i.replace(".", "/")).is_dir())}

    def cycle_from(start: str, node: str, seen: tuple) -> tuple:
        for nxt in graph[node]:
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen:
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return ()

    for m in graph:
        assert not cycle_from(m, m, (m,)), " -> ".join(cycle_from(m, m, (m,)))


def test_export_without_out_writes_into_the_run_folder(cfg_factory, tmp_path, hf_gpt2):
    from omegaconf import OmegaConf

    from gptlab import export
    from gptlab.train import train

    train(cfg_factory("trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                      "sample_tokens=0"))
    run = RunDir(tmp_path / "run")
    assert export.run(OmegaConf.create({"ckpt_path": str(run.path)})) == run.export
    assert (run.export / "config.json").is_file()
    with pytest.raises(GptlabError, match="is not a gptlab run: say where to write the export, out=FOLDER"):
        export.run(OmegaConf.create({"ckpt_path": str(hf_gpt2)}))


def test_the_one_private_read_of_hydra_still_works():
    """gptlab.cli.check reads a command line with the parser @hydra.main uses (hydra._internal.utils, pinned below
    1.4 in pyproject.toml): the attributes it reads must still be there, with these meanings."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(["-m", "--cfg", "job", "model=nano", "optim.lr=1e-3,2e-3"])
    assert (args.multirun, args.cfg, args.overrides) == (True, "job", ["model=nano", "optim.lr=1e-3,2e-3"])
    for name in ("run", "info", "shell_completion", "hydra_help", "resolve", "config_name"):
        assert hasattr(args, name), name


def test_private_hydra_names_appear_in_the_cli_only():
    package = Path(__file__).resolve().parents[1] / "gptlab"
    users = sorted(str(f.relative_to(package)) for f in package.rglob("*.py") if "hydra._internal" in f.read_text())
    assert users == ["cli.py"], users


START_CHECK = """
import sys
from gptlab.__main__ import main
heavy = ("lightning", "torchmetrics", "transformers", "matplotlib", "lm_eval", "starlette", "tensorboard")
for argv in (["train", "--help"], ["train", "modle.n_layer=2"], ["generate", "--help"], ["generate", "promt=x"]):
    sys.argv = ["gptlab", *argv]
    try:
        main()
    except SystemExit as stop:
        print("exit", stop.code, file=sys.stderr)
import gptlab.generate, gptlab.chat, gptlab.serve, gptlab.export, gptlab.inspect, gptlab.plot, gptlab.eval
print("loaded:", sorted({m.split(".")[0] for m in sys.modules} & set(heavy)))
"""


def test_help_typos_and_inference_commands_start_without_lightning():
    """`gptlab <command> --help`, a typo, and the inference commands import neither Lightning nor the optional
    libraries they do not use (scripts/bench_start.py measures how long they take)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", START_CHECK], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip().splitlines()[-1] == "loaded: []", r.stdout[-2000:] + r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: unknown config key modle.n_layer (did you mean model?): check its spelling | "
                      "gptlab train --help lists what it takes",
                      "error: unknown config key promt (did you mean prompt?): check its spelling | "
                      "gptlab generate --help lists what it takes"], r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("exit")] == ["exit 0", "exit 2", "exit 0", "exit 2"]


EVAL_CHECK = """
import sys
from omegaconf import OmegaConf
from gptlab import eval
eval.run(OmegaConf.create({"ckpt_path": sys.argv[1], "paths": {"cache_dir": sys.argv[2]}}))
print("loaded:", sorted({m.split(".")[0] for m in sys.modules} & {"lightning", "torchmetrics", "tensorboard"}))
"""


def test_eval_scores_a_checkpoint_without_lightning(tmp_path, cache_dir):
    """`gptlab eval` (the harness aside) scores a run's own validation split, found through the token cache, and
    imports no Lightning for it: the figures are lit/metrics.py's, which the LightningModule uses too."""
    import subprocess
    import sys

    from gptlab import checkpoint
    from gptlab.data import DataConfig, TokenFiles, token_entry
    from gptlab.model import GPT, GPTConfig

    tokenizer = TokenFiles.open(token_entry(DataConfig(), {"kind": "char"}, cache_dir)).tokenizer  # Tiny Shakespeare's
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    run = {"data": {"batch_size": 8}, "tokenizer": {"kind": "char"}, "trainer": {"limit_val_batches": 2}}
    checkpoint.save(tmp_path / "tiny.ckpt", model, tokenizer, run)
    r = subprocess.run([sys.executable, "-c", EVAL_CHECK, str(tmp_path / "tiny.ckpt"), str(cache_dir)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "val split: the 16 windows the run's validation scored (trainer.limit_val_batches=2;" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "loaded: []", r.stdout[-2000:]
    assert (tmp_path / "eval-tiny-val.json").is_file()
