"""Train a GPT: `python -m gptlab.train model=small data=shakespeare` (Hydra; see conf/train.yaml).

`train(cfg)` does the work and is what tests call; `main` is the thin Hydra entry point around it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gptlab import cli
from gptlab.checkpoint import resolve_checkpoint
from gptlab.config import check_keys, register_configs
from gptlab.data import TextDataModule
from gptlab.errors import GptlabError
from gptlab.lit import GPTLitModule
from gptlab.lit.callbacks import HparamsSummary, sample_text
from gptlab.model import GPTConfig
from gptlab.sweep import SWEEP_JOB_ENV, relaunches_command, run_as_own_run, write_result

register_configs()


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()  # Lightning's advert for its cloud logger


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropAdverts())
warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # inside Lightning, nothing to act on


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings worth comparing across runs, flattened for TensorBoard's HPARAMS tab."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    keep = {k: c[k] for k in ("model", "tokenizer", "optim", "scheduler", "seed")}
    keep["data"] = {k: c["data"][k] for k in ("source", "path", "batch_size", "val_fraction")}
    keep["trainer"] = {k: c["trainer"][k] for k in ("max_steps", "precision", "accumulate_grad_batches", "devices")}
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_"):
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", keep)
    return out


def with_vocab(model_cfg: GPTConfig, vocab_size: int) -> GPTConfig:
    """model.vocab_size defaults to the tokenizer's; a larger one (e.g. padded to a multiple of 64) is kept."""
    if model_cfg.vocab_size is None:
        return dataclasses.replace(model_cfg, vocab_size=vocab_size)
    if model_cfg.vocab_size < vocab_size:
        raise GptlabError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's {vocab_size} tokens: "
            "remove the override (it defaults to the tokenizer's) or raise it"
        )
    return model_cfg


def data_source(cfg: DictConfig) -> dict:
    """What a checkpoint records of its data, enough to rebuild the same validation split later."""
    keys = ("source", "path", "url", "sha256", "val_fraction")
    d = {k: cfg.data[k] for k in keys}
    if d["path"]:
        d["path"] = str(Path(d["path"]).expanduser().resolve())
    return {**d, "tokenizer": OmegaConf.to_container(cfg.tokenizer)}


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job from a composed config; return its final metrics (val/loss, val/bpc, ...)."""
    check_keys(cfg)
    if cfg.matmul_precision not in ("highest", "high", "medium"):
        raise GptlabError(f"matmul_precision={cfg.matmul_precision} is not one of highest, high, medium")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model_cfg = GPTConfig(**OmegaConf.to_container(cfg.model, resolve=True))  # shape errors before any data work
    out_dir = Path(cfg.paths.output_dir)
    ckpt_path = str(resolve_checkpoint(cfg.ckpt_path, prefer=("last.ckpt",))) if cfg.ckpt_path else None
    if (out_dir / "checkpoints" / "last.ckpt").exists():
        raise GptlabError(f"{out_dir} already holds a run's checkpoints: use a new run dir (or resume with ckpt_path=)")

    datamodule: TextDataModule = instantiate(cfg.data, tokenizer=OmegaConf.to_container(cfg.tokenizer), _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    tokenizer = datamodule.tokenizer
    model_cfg = with_vocab(model_cfg, tokenizer.vocab_size)
    module = GPTLitModule(
        model=model_cfg.to_dict(),
        tokenizer=tokenizer.to_dict(),
        optimizer=instantiate(cfg.optim, _convert_="all"),
        scheduler=OmegaConf.to_container(cfg.scheduler),
        val_tokens_per_char=datamodule.files.val_tokens_per_char,  # type: ignore[union-attr]
        data=data_source(cfg),
        compile=cfg.compile,
    )
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    callbacks.append(HparamsSummary(flat_hparams(cfg)))
    logger = instantiate(cfg.logger) if cfg.logger else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    if isinstance(trainer.accelerator, CUDAAccelerator):  # only there: torch would apply it to CPUs too
        torch.set_float32_matmul_precision(cfg.matmul_precision)

    if trainer.is_global_zero:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        m = module.model
        print(f"model: {m.num_params() / 1e6:.2f}M parameters (+{m.transformer.wpe.weight.numel() / 1e6:.2f}M "
              f"position table), vocab {model_cfg.vocab_size} ({tokenizer.kind}), context {model_cfg.block_size}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics["steps"] = trainer.global_step
    if module.best_step is not None:
        metrics["best_step"] = module.best_step
    if trainer.is_global_zero:
        report(trainer, module, cfg, metrics)
    return metrics


def report(trainer: L.Trainer, module: GPTLitModule, cfg: DictConfig, metrics: dict[str, float]) -> None:
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or "(none: no validation ran)"
    if cfg.sample_tokens > 0:
        print("\n--- sample (temperature 0.8) ---")
        print(sample_text(module, "\n", cfg.sample_tokens, temperature=0.8, seed=cfg.seed).strip())
        print("---")
    loss = metrics.get("val/loss", math.nan)
    print(f"\nstep {trainer.global_step}: val/loss {loss:.4f}  val/bpc {metrics.get('val/bpc', math.nan):.4f}")
    print(f"run dir:         {cfg.paths.output_dir}")
    print(f"best checkpoint: {best}")
    log_dir = getattr(trainer.logger, "log_dir", None)
    if log_dir:
        print(f"tensorboard:     tensorboard --logdir {log_dir}")


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="train")
@cli.reports_errors
def _main(cfg: DictConfig) -> float:
    """Train; leave result.json in the run dir; return the final val loss (what a sweeper minimises).

    In a multirun a failing job (bad settings, NaN, out of memory) is recorded as failed and the
    sweep goes on with the next job; a single run fails loudly. A multirun job on several local
    devices runs as a run of its own in a child process (see gptlab/sweep.py).
    """
    hc = HydraConfig.get()
    out_dir = Path(cfg.paths.output_dir)
    record = {"overrides": list(hc.overrides.task)}
    sweep_job = hc.mode == RunMode.MULTIRUN
    own_run_of_job = os.environ.get(SWEEP_JOB_ENV)  # we are that child: record failures as the job's
    start = time.perf_counter()
    try:
        if sweep_job and relaunches_command(cfg.trainer):
            loss = run_as_own_run(hc, out_dir).get("val/loss")
            return math.nan if loss is None else loss
        metrics = train(cfg)
    except Exception as ex:
        if not (sweep_job or own_run_of_job):
            raise
        message = cli.one_line(ex) if isinstance(ex, cli.USER_ERRORS) else f"{type(ex).__name__}: {ex}"
        failed = dict(status="failed", error=message, wall_s=time.perf_counter() - start, failed_at=time.time(),
                      **record)
        if rank_zero_only.rank == 0:
            write_result(out_dir, **failed)
        elif own_run_of_job:  # in case rank 0 is killed before it can write: the sweep reads this
            write_result(out_dir, name=f"result.rank{rank_zero_only.rank}.json", **failed)
        if own_run_of_job:
            raise  # a non-zero exit, so the other ranks stop too
        print(f"error: job {hc.job.num} failed: {message}", file=sys.stderr)
        return math.nan
    loss = metrics.get("val/loss", math.nan)
    if rank_zero_only.rank == 0:
        write_result(out_dir, status="ok" if math.isfinite(loss) else "nan", wall_s=time.perf_counter() - start,
                     **{k: metrics.get(k) for k in ("val/loss", "val/bpc", "best_step", "steps")}, **record)
    return loss


def main() -> None:
    cli.run(_main)


if __name__ == "__main__":
    main()
