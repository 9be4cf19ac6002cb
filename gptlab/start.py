"""How a training run starts: fresh, resumed (`ckpt_path=`: the checkpoint's record of the config is the truth,
the command's overrides composed on it by Hydra) or from trained weights (`init_from=`: the source's model is the
`model` option the command applies to), decided in one place; gptlab reads the checkpoint once, for its record
(Lightning's trainer.fit reads it again to restore the weights, optimizer and loops). What a resume or
init_from may change, the specs declare (docs/ARCHITECTURE.md, "Starting")."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

from gptlab import checkpoint
from gptlab.config import TrainConfig, composed, flat, to_spec
from gptlab.data import DataConfig
from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig, ConfigError, adapt
from gptlab.rundir import RunDir, find_checkpoint
from gptlab.tokenizers import Tokenizer, tokenizer_from_dict

NOT_RECORDED = ("paths", "ckpt_path", "hydra")  # where this invocation writes, not what the run is


@dataclass
class Start:
    """A run's config and what it starts from. model/tokenizer None: a fresh model, built for the data's tokenizer;
    weights: the model holds the weights to train from (init_from), else Lightning restores them (ckpt_path)."""

    cfg: DictConfig
    ckpt_path: Optional[Path] = None
    model: Optional[GPT] = None
    tokenizer: Optional[Tokenizer] = None
    weights: bool = False
    new_tokens_from: Optional[int] = None  # a resumed LoRA run's: the first token row that trains (lora record)


def start(cfg: DictConfig, overrides: Optional[list[str]]) -> Start:
    """The run `cfg` describes. overrides: the command line's, which say what a resume changes (None, a call from
    Python: every key of cfg counts as set)."""
    run = RunDir(Path(cfg.paths.output_dir))
    if not cfg.ckpt_path and not cfg.init_from and requeued(run):
        cfg.ckpt_path = str(run.path)  # a SLURM job requeued after pre-emption continues its run
    begun = resume(cfg, overrides) if cfg.ckpt_path else from_weights(cfg, overrides) if cfg.init_from else Start(cfg)
    last = RunDir(Path(begun.cfg.paths.output_dir)).last
    if last.exists() and (begun.ckpt_path is None or last.resolve() != begun.ckpt_path.resolve()):
        raise GptlabError(f"{last.parent.parent} already holds a run's checkpoints: use a new run dir "
                          "(or resume with ckpt_path=)")
    return begun


def requeued(run: RunDir) -> bool:
    """A SLURM job started again after a requeue (SLURM_RESTART_COUNT > 0) that left a last checkpoint in its run dir:
    the job resumes it instead of refusing the folder."""
    return os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0") and run.last.is_file()


def resume(cfg: DictConfig, overrides: Optional[list[str]]) -> Start:
    """ckpt_path= with what the command says: nothing (a call from Python: cfg's keys count as set), single keys
    composed on the run's recorded config, or the command that started the run again, groups and all (a rerun
    after a crash), whose settings are the run's where it repeats them."""
    path = find_checkpoint(cfg.ckpt_path, last_first=True)
    record = checkpoint.read_record(checkpoint.read(path), path)
    stored = record["config"]
    if cfg.init_from and not same_source(stored.get("init_from"), cfg.init_from):
        raise GptlabError("init_from= starts a new run from trained weights, ckpt_path= resumes a run: give one "
                          "(or the init_from= the resumed run started from, as its command had it)")
    if overrides is None:
        new = OmegaConf.merge(stored, run_config(cfg))
    else:
        ConfigStore.instance().store(name="resumed_run", node={"defaults": ["train_schema", "_self_"], **stored})
        # `+key=` added a key to the defaults, which the run may hold already: add it or set it (`++`)
        plus = ["+" + o if o.startswith("+") and not o.startswith("++") else o for o in overrides]
        try:
            new = composed("resumed_run", plus)
        except ConfigCompositionException as e:
            if "No match in the defaults list" not in str(e):
                raise
            new = composed("train", overrides)  # a group choice: the command as a whole says what the run is
    before, after = flat(stored), flat(run_config(new))
    for key in fixed_on_resume():
        for path_, value in after.items():
            if (path_ == key or path_.startswith(key + ".")) and path_ in before and str(before[path_]) != str(value):
                raise GptlabError(f"{path_}={value} conflicts with the run being resumed ({path_}={before[path_]}): "
                                  "a resumed run keeps its model and data; drop the override, or train a new run")
    changed = [f"{k} {before[k]} -> {v}" for k, v in after.items() if k in before and str(before[k]) != str(v)]
    if changed:
        print(f"[resumed with {'; '.join(changed)}]", flush=True)
    for k in NOT_RECORDED:
        if k in cfg and k != "hydra":
            new[k] = cfg[k]
    keep_log(new)
    return Start(new, path, GPT(GPTConfig(**record["model"])), tokenizer_from_dict(record["tokenizer"]),
                 new_tokens_from=(record.get("lora") or {}).get("new_tokens_from"))


def same_source(recorded: Optional[str], init_from: str) -> bool:
    """Whether a run that recorded init_from=`recorded` started from init_from (the same text, or the same file
    or folder)."""
    if recorded is None:
        return False
    same_file = Path(str(recorded)).exists() and Path(str(recorded)).resolve() == Path(str(init_from)).resolve()
    return str(recorded) == str(init_from) or same_file


def fixed_on_resume() -> list[str]:
    """The keys a resumed run keeps, as the specs declare them."""
    keys = list(TrainConfig.FIXED_ON_RESUME)
    for node, spec in (("model", GPTConfig), ("data", DataConfig)):
        keys += [f"{node}.{f.name}" for f in dataclasses.fields(spec) if f.name not in spec.CHANGEABLE_ON_RESUME]
    return keys


def from_weights(cfg: DictConfig, overrides: Optional[list[str]]) -> Start:
    source = checkpoint.load(cfg.init_from)
    spec = source.model.config
    target = spec
    if overrides is not None:  # the source's model as the model option, under what the command sets
        ConfigStore.instance().store(group="model", name="init_from", node=spec.to_dict())
        node = composed("train", ["model=init_from", *overrides]).model
        set_ = {k: getattr(spec, k) if v is None else v for k, v in node.items()}  # None: as the source has it
        target = to_spec(GPTConfig, set_, "model")
        for f in dataclasses.fields(GPTConfig):
            old, new = getattr(spec, f.name), getattr(target, f.name)
            if old != new and f.name not in GPTConfig.CHANGEABLE_ON_INIT:
                raise GptlabError(f"model.{f.name}={new} conflicts with the model of init_from={cfg.init_from} "
                                  f"(model.{f.name}={old}): its shape comes from there; only "
                                  f"{', '.join('model.' + k for k in GPTConfig.CHANGEABLE_ON_INIT)} may change")
    try:
        model = adapt(source.model, target)
    except ConfigError as e:
        raise GptlabError(str(e)) from None
    cfg.model = target  # the run's record says what it trains
    return Start(cfg, None, model, source.tokenizer, weights=True)


def run_config(cfg: Any) -> dict:
    """The run's settings as a checkpoint records them: the composed config with data.path absolute, its
    interpolations kept (`${paths.output_dir}` means the folder of whichever invocation runs it)."""
    c = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else dict(cfg)
    assert isinstance(c, dict)
    c = {k: v for k, v in c.items() if k not in NOT_RECORDED}
    if c["data"].get("path") and not str(c["data"]["path"]).startswith("hf:"):  # hf:NAME is not a file
        c["data"]["path"] = str(Path(c["data"]["path"]).expanduser().resolve())
    return c


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
