"""Train a GPT: `python -m gptlab.train model=small data=shakespeare` (Hydra; see conf/train.yaml).
`train(cfg)` does the work (tests call it); `_main` is the Hydra entry point around it, wrapped by the sweep's
bookkeeping (`sweep.records_result`). How a run starts (fresh, resumed, from weights): gptlab.start."""

from __future__ import annotations

import dataclasses
import functools
import math
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

import gptlab
from gptlab import checkpoint, cli, runlog, sweep
from gptlab.config import (OPTIMIZERS, SCHEDULES, check_top_level, flat, partial_of, register_configs, to_spec,
                           tokenizer_spec)
from gptlab.data import DataConfig, make_datamodule
from gptlab.devices import auto_compile, check_cpu_compile, lightning_device
from gptlab.errors import GptlabError
from gptlab.data.rewards import load_reward
from gptlab.lit import GPTLitModule
from gptlab.lit.grpo import GRPOConfig
from gptlab.lit.rl import GRPOModule
from gptlab.lit.callbacks import HparamsSummary, RunSummary, TextSamples, TimeBudget
from gptlab.lit.optim import orthogonalises
from gptlab.lit.safety import AtomicCheckpointIO, Interrupted, Safeguards, stops_on_signals
from gptlab.lit.trainer import TrainerConfig, lightning_settings
from gptlab.model import GREEDY, GPTConfig, LoRAConfig, SamplingConfig, complete
from gptlab.model.chat import reply
from gptlab.rundir import RunDir
from gptlab.start import Start, run_config, start
from gptlab.usage import train_help

register_configs()
cli.quiet_lightning()
# a run resumed into another folder: expected, and the best checkpoint is still found by its path
warnings.filterwarnings("ignore", message="The dirpath has changed")


def build(cfg: DictConfig, begun: Optional[Start] = None, started: Optional[float] = None
          ) -> tuple[L.Trainer, GPTLitModule, L.LightningDataModule]:
    """Every object of the run, from a composed config; nothing is written yet. begun: what the run starts from
    (start.start: a resumed run's model and tokenizer, or init_from's weights). started: the monotonic time
    trainer.max_time counts from (None: now)."""
    begun = begun or Start(cfg)
    check_top_level(cfg)
    model_spec = begun.model.config if begun.model else to_spec(GPTConfig, cfg.model, "model")
    data_spec = to_spec(DataConfig, cfg.data, "data")
    trainer_spec = to_spec(TrainerConfig, cfg.trainer, "trainer")
    optimizer = partial_of(cfg.optim, "optim", OPTIMIZERS)
    if str(trainer_spec.precision) == "16-mixed" and cfg.optim.get("fused") and trainer_spec.gradient_clip_val:
        raise GptlabError("optim.fused=true cannot clip gradients under trainer.precision=16-mixed (the fused step "
                          "unscales them itself): use bf16-mixed, optim.fused=false or trainer.gradient_clip_val=null")
    if orthogonalises(optimizer) and "fsdp" in str(trainer_spec.strategy).lower():
        raise GptlabError("optim=muon cannot run under FSDP (Muon orthogonalises whole matrices; FSDP shards "
                          "them): use trainer=ddp, or optim=adamw")
    device = lightning_device(trainer_spec.accelerator)
    settings, why = lightning_settings(trainer_spec)
    compiled, why_compile = (bool(cfg.compile), "") if cfg.compile != "auto" else auto_compile(device)
    if compiled and device.type == "cpu":
        check_cpu_compile()
    scheduler = partial_of(cfg.scheduler, "scheduler", SCHEDULES)
    tokenizer = begun.tokenizer or dataclasses.asdict(tokenizer_spec(cfg.tokenizer))
    objective = to_spec(GRPOConfig, cfg.objective, "objective") if cfg.objective is not None else None
    lora = to_spec(LoRAConfig, cfg.lora, "lora") if cfg.lora is not None else None
    if lora is not None and "fsdp" in str(trainer_spec.strategy).lower():
        raise GptlabError("finetune=lora cannot run under FSDP here (it shards the frozen and the trained weights "
                          "alike): use trainer=ddp, whose adapters' gradients are all that is exchanged")
    datamodule = make_datamodule(data_spec, tokenizer, block_size=model_spec.block_size, seed=cfg.seed,
                                 cache_dir=cfg.paths.cache_dir, data_dir=cfg.paths.data_dir,
                                 questions=objective is not None)
    parts = dict(model=model_spec, optimizer=optimizer, scheduler=scheduler, compile=compiled,
                 run_config=run_config(cfg), tokenizer=begun.tokenizer, gpt=begun.model if begun.weights else None,
                 lora=lora, base=base_of(cfg.init_from) if lora else None, new_tokens_from=begun.new_tokens_from)
    module = GPTLitModule(**parts) if objective is None else \
        GRPOModule(objective, load_reward(objective.reward), cfg.seed, **parts)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    callbacks = [c for c in callbacks if c is not None]  # a factory may have nothing to add (no clock saves)
    end_tokens = cfg.sample_tokens + sum(c.sampling.max_new_tokens for c in callbacks if isinstance(c, TextSamples))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    hparams = flat({k: v for k, v in resolved.items() if k in module.run_config and k not in ("callbacks", "logger")})
    callbacks += [RunSummary(trainer_spec.max_time, why, compiled, why_compile),
                  TimeBudget(trainer_spec.max_time, started, end_tokens), Safeguards(), HparamsSummary(hparams)]
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


def base_of(init_from: Optional[str]) -> Optional[str]:
    """What a LoRA run's checkpoint names as its base: a folder or file as an absolute path, a name (gpt2) as it is."""
    if not init_from:
        return None
    path = Path(str(init_from)).expanduser()
    return str(path.resolve()) if path.exists() else str(init_from)


def _with_run_log(task: Callable[..., dict[str, float]]) -> Callable[..., dict[str, float]]:
    """train() with its run's own log: what the job prints also goes to <run dir>/train.log, and a heartbeat fills
    its silences (gptlab.runlog). Rank 0's only: a DDP run's other ranks have little to say, and one file."""

    @functools.wraps(task)
    def logged(cfg: DictConfig, overrides: Optional[list[str]] = None, started: Optional[float] = None
               ) -> dict[str, float]:
        started = time.monotonic() if started is None else started
        log = RunDir(Path(cfg.paths.output_dir)).output_log
        with runlog.kept(log, since=started, write=rank_zero_only.rank == 0, words=cli.last_words):
            return task(cfg, overrides, started)

    return logged


@_with_run_log
def train(cfg: DictConfig, overrides: Optional[list[str]] = None, started: Optional[float] = None) -> dict[str, float]:
    """Run one training job from a composed config; return its final metrics (val/loss, val/bpc, ...).

    With ckpt_path= the run resumes with the settings its checkpoint records, with init_from= a new run starts
    from trained weights (see gptlab.start). overrides: the command line's (what a resume changes). started:
    the monotonic time the job began, which trainer.max_time counts from (None: now).
    """
    started = time.monotonic() if started is None else started
    begun = start(cfg, overrides)
    cfg = begun.cfg
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer, module, datamodule = build(cfg, begun, started)
    if isinstance(trainer.accelerator, CUDAAccelerator):  # only there: torch would apply it to CPUs too
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    try:
        with warnings.catch_warnings(), stops_on_signals():
            if begun.ckpt_path is not None:  # resuming in its own folder: its checkpoints are expected there
                warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            trainer.fit(module, datamodule=datamodule, ckpt_path=begun.ckpt_path)
    except Interrupted as stop:  # a signal: the step was saved; say how to go on, exit 128 + the signal
        before = stop.checkpoint is None and begun.ckpt_path is None and trainer.global_step == 0
        removed = before and trainer.is_global_zero and cli.remove_if_unused(cfg)
        if trainer.is_global_zero:
            print(stop.report(cfg.paths.output_dir, cli.COMMAND, budget_left(trainer), removed),
                  file=sys.stderr if before else sys.stdout, flush=True)
        raise SystemExit(stop.exit_code) from None

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics["steps"] = trainer.global_step
    metrics["params"] = module.model.num_params()
    if module.best_step is not None:
        metrics["best_step"] = module.best_step
    if trainer.is_global_zero:
        report(trainer, module, cfg, metrics)
    return metrics


def budget_left(trainer: L.Trainer) -> Optional[float]:
    """Seconds of trainer.max_time this job had left; None without a time budget."""
    budget = TimeBudget.of(trainer)
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
    print(f"\nstep {trainer.global_step}: val/loss {loss:.4f}  val/bpc {metrics.get('val/bpc', math.nan):.4f}  "
          f"val/bpb {metrics.get('val/bpb', math.nan):.4f}")
    judged = [f"{k} {v:.1%}" for k, v in metrics.items() if k.startswith(("val/exact_match", "val/pass@"))]
    if judged:  # objective=grpo: the held-out answers it judged
        print(f"held-out answers: {'  '.join(judged)}")
    if trainer.fast_dev_run and cli.remove_if_unused(cfg):  # a smoke test: nothing in its folder to keep
        print("run dir:         (none: debug=fast keeps nothing, its folder was removed)")
    else:
        print(f"run dir:         {cfg.paths.output_dir}")
    print(f"best checkpoint: {best}")
    run = RunDir(Path(cfg.paths.output_dir))
    if module.lora is not None and module.lora.merge and run.best.is_file():  # a plain model, for any tool
        merged = checkpoint.load(run.best)
        checkpoint.save(run.merged, merged.model, merged.tokenizer, merged.config)
        print(f"merged:          {run.merged} (the adapters folded into the weights)")
    log_dir = getattr(trainer.logger, "log_dir", None)
    if log_dir and not trainer.fast_dev_run:
        print(f"tensorboard:     tensorboard --logdir {shlex.quote(str(log_dir))}")


def shown(text: str, limit: int = 60) -> str:
    """A message as a quoted one-liner, cut to `limit` characters (an untrained model's answer can be hundreds
    of spaces or newlines)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="train")
@cli.reports_errors
@sweep.records_result(lambda cfg: sweep.relaunches_command(lightning_settings(to_spec(TrainerConfig, cfg.trainer,
                                                                                       "trainer"))[0]))
def _main(cfg: DictConfig) -> dict[str, float]:
    # trainer.max_time counts the whole job: from the process's start for the first, from here for a sweep's next
    started = gptlab.STARTED if HydraConfig.get().job.get("num", 0) in (0, None) else time.monotonic()
    return train(cfg, overrides=list(HydraConfig.get().overrides.task), started=started)


def main() -> None:
    cli.run(_main, free_text=cli.COMMAND_LINES["train"].free_text, help=train_help)


if __name__ == "__main__":
    main()
