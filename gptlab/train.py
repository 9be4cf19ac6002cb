"""Train a GPT: `python -m gptlab.train model=small data=shakespeare` (Hydra; see conf/train.yaml).

`train(cfg)` does the work and is what tests call; `_main` is the thin Hydra entry point around it, and
the sweep's bookkeeping wraps it (`sweep.records_result`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

import gptlab
from gptlab import checkpoint, cli, sweep
from gptlab.config import (OPTIMIZERS, SCHEDULES, TrainConfig, check_top_level, register_configs, to_spec,
                           tokenizer_spec)
from gptlab.data import DataConfig, make_datamodule
from gptlab.devices import auto_compile, auto_precision, check_cpu_compile, lightning_device
from gptlab.errors import GptlabError
from gptlab.lit import GPTLitModule
from gptlab.lit.callbacks import HparamsSummary, RunSummary, TextSamples, TimeBudget
from gptlab.lit.safety import AtomicCheckpointIO, Interrupted, Safeguards, requeued_run, stops_on_signals
from gptlab.lit.trainer import TrainerConfig
from gptlab.model import GPT, GPTConfig, SamplingConfig, complete
from gptlab.model.chat import GREEDY, reply
from gptlab.pretrained import adapt
from gptlab.tokenizers import Tokenizer, tokenizer_from_dict

register_configs()


class _DropBanners(logging.Filter):
    """Lightning's start-up lines that say nothing about this run (gptlab prints its own summary)."""

    NOISE = ("Tip:", " available: ", "`Trainer(", "LOCAL_RANK:", "`Trainer.fit` stopped", "Automatic Mixed Precision")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOISE)


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropBanners())
warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # inside Lightning, nothing to act on
# a run resumed into another folder: expected, and the best checkpoint is still found by its path
warnings.filterwarnings("ignore", message="The dirpath has changed")

# what a resumed run may not change: the weights and the data stream belong to these
FIXED_ON_RESUME = ("model", "tokenizer", "data.path", "data.url", "data.val_fraction", "data.text_field",
                   "data.hf_config", "data.hf_split", "init_from")
CHANGEABLE_ON_RESUME = ("model.dropout",)
NOT_RECORDED = ("paths", "ckpt_path", "hydra")  # where this invocation writes, not what the run is


def run_config(cfg: DictConfig) -> dict:
    """The run's settings as a checkpoint records them: the composed config with data.path absolute, its
    interpolations kept (`${paths.output_dir}` means the folder of whichever invocation runs it)."""
    c = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(c, dict)
    c = {k: v for k, v in c.items() if k not in NOT_RECORDED}
    if c["data"].get("path") and not str(c["data"]["path"]).startswith("hf:"):  # hf:NAME is not a file
        c["data"]["path"] = str(Path(c["data"]["path"]).expanduser().resolve())
    return c


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_layer": 4}} -> {"model.n_layer": 4}; Hydra's `_target_` keys left out."""
    if not isinstance(node, dict):
        return {prefix: node if isinstance(node, (int, float, str, bool)) else str(node)}
    out: dict[str, Any] = {}
    for k, v in node.items():
        if not str(k).startswith("_"):
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


RECIPES = ("experiment", "debug", "hparams_search")  # `# @package _global_` groups: they set keys anywhere


def user_keys(overrides: list[str], recipes: bool = False) -> list[tuple[str, bool]]:
    """The config keys a command line sets: (key, deleted). A group choice (`model=nano`) sets the whole node;
    a recipe (`experiment=...`) sets the keys its file states (recipes=True), or is refused (a resumed run)."""
    keys = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.key_or_group.startswith("hydra") or o.key_or_group in ("ckpt_path", "init_from"):
            continue
        if o.key_or_group in RECIPES:
            if not recipes:
                raise GptlabError(f"{o.key_or_group}= cannot be combined with ckpt_path=: a resumed run keeps its "
                                  "own settings; override single keys instead (e.g. trainer.max_steps=...)")
            keys += [(k, False) for k in recipe_keys(o.key_or_group, str(o.value()))]
            continue
        keys.append((o.key_or_group.split("@")[0].lstrip("+~"), o.is_delete()))
    return keys


def recipe_keys(group: str, name: str) -> list[str]:
    """The dotted keys a recipe file sets, e.g. conf/experiment/finetune_shakespeare.yaml -> model.dropout, ..."""
    import yaml
    from importlib import resources

    body = yaml.safe_load((resources.files("gptlab.conf") / group / f"{name}.yaml").read_text()) or {}
    body.pop("defaults", None)
    return list(flat(body))


def resumed(cfg: DictConfig, stored: dict, overrides: Optional[list[str]]) -> DictConfig:
    """The config of a resumed run: the checkpoint's own settings, with only what the command line sets
    changed. overrides None (train called in-process): every key of cfg counts as set."""
    out = OmegaConf.create(stored)
    before = flat(stored)
    changed = user_keys(overrides) if overrides is not None else [(k, False) for k in stored]
    for key, deleted in changed:
        if deleted:
            OmegaConf.update(out, key, None, merge=False, force_add=True)
            continue
        new = OmegaConf.select(cfg, key)
        new = OmegaConf.to_container(new, resolve=True) if OmegaConf.is_config(new) else new
        for path, value in flat(new, key).items() if isinstance(new, dict) else [(key, new)]:
            old = before.get(path)
            fixed = path.startswith(FIXED_ON_RESUME) and not path.startswith(CHANGEABLE_ON_RESUME)
            if fixed and str(old) != str(value) and not (path == "data.path" and value and old == str(Path(value).resolve())):
                raise GptlabError(f"{path}={value} conflicts with the run being resumed ({path}={old}): "
                                  "a resumed run keeps its model and data; drop the override, or train a new run")
        if not (key.startswith(FIXED_ON_RESUME) and not key.startswith(CHANGEABLE_ON_RESUME)):
            OmegaConf.update(out, key, new, merge=False, force_add=True)
    for k in NOT_RECORDED:
        if k in cfg and k != "hydra":
            out[k] = cfg[k]
    return out


def build(cfg: DictConfig, start: Optional[Start] = None, started: Optional[float] = None
          ) -> tuple[L.Trainer, GPTLitModule, L.LightningDataModule]:
    """Every object of the run, from a composed config; nothing is written yet. start: the model and the
    tokenizer a run starts from (init_from=) or resumes with, instead of new ones. started: the monotonic
    time trainer.max_time counts from (None: now)."""
    check_top_level(cfg)
    model_spec = start.model.config if start else to_spec(GPTConfig, cfg.model, "model")
    data_spec = to_spec(DataConfig, cfg.data, "data")
    trainer_spec = to_spec(TrainerConfig, cfg.trainer, "trainer")
    optimizer = _partial(cfg.optim, "optim", OPTIMIZERS)
    if str(trainer_spec.precision) == "16-mixed" and cfg.optim.get("fused") and trainer_spec.gradient_clip_val:
        raise GptlabError("optim.fused=true cannot clip gradients under trainer.precision=16-mixed (the fused step "
                          "unscales them itself): use bf16-mixed, optim.fused=false or trainer.gradient_clip_val=null")
    device = lightning_device(trainer_spec.accelerator)
    settings, why = lightning_settings(trainer_spec)
    compiled, why_compile = (bool(cfg.compile), "") if cfg.compile != "auto" else auto_compile(device)
    if compiled and device.type == "cpu":
        check_cpu_compile()
    scheduler = _partial(cfg.scheduler, "scheduler", SCHEDULES)
    tokenizer = start.tokenizer if start else dataclasses.asdict(tokenizer_spec(cfg.tokenizer))
    datamodule = make_datamodule(data_spec, tokenizer, block_size=model_spec.block_size, seed=cfg.seed,
                                 cache_dir=cfg.paths.cache_dir, data_dir=cfg.paths.data_dir)
    module = GPTLitModule(model_spec, optimizer=optimizer, scheduler=scheduler, compile=compiled,
                          run_config=run_config(cfg), tokenizer=start.tokenizer if start else None,
                          gpt=start.model if start and start.weights else None)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    callbacks.append(RunSummary(trainer_spec.max_time, why, compiled, why_compile))
    end_tokens = cfg.sample_tokens + sum(c.sampling.max_new_tokens for c in callbacks if isinstance(c, TextSamples))
    callbacks.append(TimeBudget(trainer_spec.max_time, started, end_tokens))
    # signals save the step, the clock saves too, a NaN stops the run (an older run's config lacks the key)
    callbacks.append(Safeguards(cfg.get("checkpoint_every", TrainConfig.checkpoint_every)))
    callbacks.append(HparamsSummary(flat({k: v for k, v in resolved.items() if k in module.run_config
                                          and k not in ("callbacks", "logger")})))
    logger = instantiate(cfg.logger) if cfg.logger else False
    if isinstance(settings["profiler"], dict):  # a profiler config with _target_
        settings["profiler"] = instantiate(settings["profiler"])
    try:
        trainer = L.Trainer(**settings, callbacks=callbacks, logger=logger, default_root_dir=cfg.paths.output_dir,
                            plugins=[AtomicCheckpointIO()])  # a kill while saving leaves the previous file whole
    except (ValueError, MisconfigurationException) as e:  # Lightning's word on devices and strategies
        hint = " This machine has no GPU: use trainer=cpu." if "gpu" in str(e).lower() and \
            not torch.cuda.is_available() else ""
        raise GptlabError(f"trainer: {' '.join(str(e).split())}{hint}") from None
    return trainer, module, datamodule


def _partial(node: DictConfig, name: str, known: dict[str, type]) -> Any:
    """A `_partial_` config (optimizer, schedule): checked against its spec where gptlab knows the target."""
    if node.get("_target_") in known:
        spec = to_spec(known[node._target_], node, name)
        return functools.partial(hydra.utils.get_method(node._target_), **dataclasses.asdict(spec))
    return instantiate(node, _convert_="all")


@dataclasses.dataclass
class Start:
    """What a run starts from other than a fresh model: a model (its spec, and with weights=True its weights
    too) and the tokenizer that goes with it."""

    model: GPT
    tokenizer: Tokenizer
    weights: bool


# what init_from= may change of the source's model: not its shape
CHANGEABLE_ON_INIT = ("dropout", "block_size", "vocab_size", "attention")


def initial_model(source: checkpoint.Loaded, cfg: DictConfig, overrides: Optional[list[str]]) -> GPT:
    """The source's model, with what the command line may change of it: dropout, a smaller block_size (the
    position table is cut), a larger vocab_size (padding rows), the attention path. Any other model key that
    differs from the source's is one line."""
    spec = source.model.config
    changes: dict[str, Any] = {}
    for key, _ in user_keys(overrides or [], recipes=True):
        if key != "model" and not key.startswith("model."):
            continue
        node = OmegaConf.to_container(cfg.model, resolve=True) if key == "model" else \
            {key.split(".", 1)[1]: OmegaConf.select(cfg, key)}
        for name, value in node.items():  # type: ignore[union-attr]
            if value is None or value == getattr(spec, name, value):  # None: as the source has it
                continue
            if name not in CHANGEABLE_ON_INIT:
                raise GptlabError(f"model.{name}={value} conflicts with the model of init_from={cfg.init_from} "
                                  f"(model.{name}={getattr(spec, name)}): its shape comes from there; only "
                                  f"{', '.join('model.' + k for k in CHANGEABLE_ON_INIT)} may change")
            changes[name] = value
    try:
        target = dataclasses.replace(spec, **changes)
    except ValueError as e:
        raise GptlabError(str(e)) from None
    return adapt(source.model, target)


def starting_point(cfg: DictConfig, overrides: Optional[list[str]], stored: Optional[dict]) -> Optional[Start]:
    if stored is not None:  # resuming: Lightning restores the weights; the spec and tokenizer are the run's
        return Start(GPT(GPTConfig(**stored["model"])), tokenizer_from_dict(stored["tokenizer"]), weights=False)
    if not cfg.init_from:
        return None
    source = checkpoint.load(cfg.init_from)
    return Start(initial_model(source, cfg, overrides), source.tokenizer, weights=True)


def train(cfg: DictConfig, overrides: Optional[list[str]] = None, started: Optional[float] = None) -> dict[str, float]:
    """Run one training job from a composed config; return its final metrics (val/loss, val/bpc, ...).

    With ckpt_path=, the run resumes from its checkpoint with the settings the checkpoint records;
    with init_from=, a new run starts from a trained model's weights (a gptlab run or GPT-2). overrides
    (the command line) say which settings this call changes. started: the monotonic time the job began,
    which trainer.max_time counts from (None: now).
    """
    started = time.monotonic() if started is None else started
    ckpt_path, stored = None, None
    if not cfg.ckpt_path and not cfg.init_from and requeued_run(Path(cfg.paths.output_dir)):
        cfg.ckpt_path = str(cfg.paths.output_dir)  # a SLURM job requeued after pre-emption continues its run
    if cfg.ckpt_path and cfg.init_from:
        raise GptlabError("init_from= starts a new run from trained weights, ckpt_path= resumes a run: give one")
    if cfg.ckpt_path:
        ckpt_path = checkpoint.resolve_checkpoint(cfg.ckpt_path, prefer=("last.ckpt",))
        stored = checkpoint.read_record(checkpoint.read(ckpt_path), ckpt_path)
        cfg = resumed(cfg, stored["config"], overrides)
        keep_log(cfg)
    out_dir = Path(cfg.paths.output_dir)
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.exists() and (ckpt_path is None or last.resolve() != ckpt_path.resolve()):
        raise GptlabError(f"{out_dir} already holds a run's checkpoints: use a new run dir (or resume with ckpt_path=)")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer, module, datamodule = build(cfg, starting_point(cfg, overrides, stored), started)
    if isinstance(trainer.accelerator, CUDAAccelerator):  # only there: torch would apply it to CPUs too
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    try:
        with warnings.catch_warnings(), stops_on_signals():
            if ckpt_path is not None:  # resuming in its own folder: its checkpoints are expected there
                warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except Interrupted as stop:  # a signal: the step was saved; say how to go on, exit 128 + the signal
        if stop.checkpoint is None and ckpt_path is None and trainer.global_step == 0:  # before training began
            removed = trainer.is_global_zero and cli.remove_if_unused(cfg)
            print(f"\ninterrupted by {signal.Signals(stop.signum).name} before training began: nothing saved"
                  + (", its run folder removed" if removed else ""), file=sys.stderr, flush=True)
        elif trainer.is_global_zero:
            print(stop.report(cfg.paths.output_dir, cli.COMMAND, budget_left(trainer)), flush=True)
        raise SystemExit(stop.exit_code) from None

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics["steps"] = trainer.global_step
    if module.best_step is not None:
        metrics["best_step"] = module.best_step
    if trainer.is_global_zero:
        report(trainer, module, cfg, metrics)
    return metrics


def keep_log(cfg: DictConfig) -> None:
    """A run resumed in its own folder goes on writing its TensorBoard log where it was (the overrides that name
    a new log, trainer.max_time=... say, would start another): the one log folder there, if there is one."""
    logger = cfg.get("logger")
    if not logger or "save_dir" not in logger:
        return
    base = Path(logger.save_dir) / str(logger.get("name") or "")
    logs = [d for d in base.iterdir() if d.is_dir()] if base.is_dir() else []
    if len(logs) == 1:
        logger.version = logs[0].name


def budget_left(trainer: L.Trainer) -> Optional[float]:
    """Seconds of trainer.max_time this job had left; None without a time budget."""
    budget = next((c for c in trainer.callbacks if isinstance(c, TimeBudget)), None)  # type: ignore[attr-defined]
    return budget.left() if budget is not None else None


def report(trainer: L.Trainer, module: GPTLitModule, cfg: DictConfig, metrics: dict[str, float]) -> None:
    ckpt_cb = trainer.checkpoint_callback
    if trainer.fast_dev_run:
        best = "(none: debug=fast writes no checkpoints or logs)"
    else:
        best = getattr(ckpt_cb, "best_model_path", "") or "(none: no validation ran)"
    conversations = getattr(trainer.datamodule, "val_conversations", None)  # type: ignore[attr-defined]
    left = budget_left(trainer)
    if cfg.sample_tokens > 0 and left is not None and left <= 0:
        print("\n(no sample: trainer.max_time is spent)")
    elif cfg.sample_tokens > 0 and conversations:  # a chat run: its answers to a few val questions
        print("\n--- greedy answers to val conversations ---")
        greedy = dataclasses.replace(GREEDY, max_new_tokens=cfg.sample_tokens)
        for conv in conversations[:3]:
            k = next(i for i, m in enumerate(conv.messages) if m["role"] == "assistant")
            answer, _ = reply(module.model, module.tokenizer, conv.messages[:k], greedy)  # type: ignore[arg-type]
            print(f"{shown(conv.messages[k - 1]['content'])} -> {shown(answer)} "
                  f"(expected {shown(conv.messages[k]['content'])})")
        print("---")
    elif cfg.sample_tokens > 0:
        sampling = SamplingConfig(max_new_tokens=cfg.sample_tokens)
        (text,) = complete(module.model, module.tokenizer, "\n", sampling, seed=cfg.seed)  # type: ignore[arg-type]
        print(f"\n--- sample (temperature {sampling.temperature}) ---\n{text.strip()}\n---")
    loss = metrics.get("val/loss", math.nan)
    print(f"\nstep {trainer.global_step}: val/loss {loss:.4f}  val/bpc {metrics.get('val/bpc', math.nan):.4f}")
    if trainer.fast_dev_run and cli.remove_if_unused(cfg):  # a smoke test: nothing in its folder to keep
        print("run dir:         (none: debug=fast keeps nothing, its folder was removed)")
    else:
        print(f"run dir:         {cfg.paths.output_dir}")
    print(f"best checkpoint: {best}")
    log_dir = getattr(trainer.logger, "log_dir", None)
    if log_dir and not trainer.fast_dev_run:
        print(f"tensorboard:     tensorboard --logdir {shlex.quote(str(log_dir))}")


def shown(text: str, limit: int = 60) -> str:
    """A message as a quoted one-liner, cut to `limit` characters (an untrained model's answer can be hundreds
    of spaces or newlines)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


def lightning_settings(spec: TrainerConfig) -> tuple[dict, str]:
    """lightning.Trainer's arguments for a trainer spec, and why its precision is what it is: precision=auto is
    decided for the device it trains on; max_time is left to the TimeBudget callback."""
    precision, why = str(spec.precision), ""
    if precision == "auto":
        precision, why = auto_precision(lightning_device(spec.accelerator))
    return {**dataclasses.asdict(spec), "precision": precision, "max_time": None}, why


def trainer_kwargs(cfg: DictConfig) -> dict:
    return lightning_settings(to_spec(TrainerConfig, cfg.trainer, "trainer"))[0]


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="train")
@cli.reports_errors
@sweep.records_result(lambda cfg: sweep.relaunches_command(trainer_kwargs(cfg)))
def _main(cfg: DictConfig) -> dict[str, float]:
    # trainer.max_time counts the whole job: from the process's start for the first, from here for a sweep's next
    started = gptlab.STARTED if HydraConfig.get().job.get("num", 0) in (0, None) else time.monotonic()
    return train(cfg, overrides=list(HydraConfig.get().overrides.task), started=started)


def resume_in_place(argv: list[str]) -> list[str]:
    """`ckpt_path=RUN` alone continues in RUN's own folder: Hydra must be told before it makes a new one
    (and keeps RUN's .hydra/ as the run's original record)."""
    ckpt = next((a.split("=", 1)[1] for a in argv if a.startswith("ckpt_path=")), None)
    if not ckpt or {"-m", "--multirun"} & set(argv) or any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    try:
        found = checkpoint.resolve_checkpoint(ckpt, prefer=("last.ckpt",))
    except GptlabError:
        return argv  # train() says what is wrong, in one line
    run_dir = found.parent.parent if found.parent.name == "checkpoints" else found.parent
    quoted = str(run_dir.resolve()).replace("\\", "\\\\").replace("'", "\\'")
    return [*argv, f"hydra.run.dir='{quoted}'", "hydra.output_subdir=null"]


FREE_TEXT = ("data.path", "ckpt_path", "init_from", "paths.data_dir", "paths.cache_dir")
GROUPS = ["model", "data", "tokenizer", "trainer", "optim", "scheduler", "callbacks", "logger", "experiment",
          "debug", "hparams_search"]


def help_text() -> str:
    from gptlab.config import TrainConfig
    from gptlab.usage import entry_help, train_defaults

    return entry_help(
        "Train a GPT; every run gets a folder under outputs/ with checkpoints and TensorBoard logs.",
        "[group=option ...] [key=value ...]   (-m: a sweep over comma-separated values)", TrainConfig,
        GROUPS, train_defaults(), skip=tuple(GROUPS),
        notes="Any key of a group is set the same way (model.n_layer=4, optim.lr=3e-4, trainer.max_steps=500);\n"
              "every key with its value: {command} --cfg job. Paths (data.path=, ckpt_path=) are taken as typed.")


def main() -> None:
    sys.argv[1:] = resume_in_place(sys.argv[1:])
    cli.run(_main, free_text=FREE_TEXT, help=help_text())


if __name__ == "__main__":
    main()
