"""Evaluate a checkpoint: `python -m gptlab.eval ckpt_path=RUN_DIR [data.path=other.txt] [whole_split=true]`.

Loss (nats per token), perplexity and bits per character, computed by the LightningModule's own
validation step, so eval and training mean the same thing by val/loss. By default it scores the windows
the run's validation scored (its trainer.limit_val_batches, batch size and precision), so the figure
equals the one the run logged; `whole_split=true` scores every window of the split; `data.path=` scores
every window of another text, encoded with the checkpoint's tokenizer. The table is printed and written
as JSON next to the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from gptlab import checkpoint, cli
from gptlab.config import EvalConfig, register_configs, to_spec, tokenizer_spec
from gptlab.data import DataConfig, DataError, FixedWindows, TextDataModule, encode, read_text
from gptlab.devices import pick_device
from gptlab.errors import GptlabError
from gptlab.lit import GPTLitModule
from gptlab.lit.trainer import TrainerConfig

register_configs()


def run(node: DictConfig) -> dict:
    cfg = to_spec(EvalConfig, node, "eval")
    device = pick_device(cfg.device)
    loaded = checkpoint.load(cfg.ckpt_path)
    run_cfg = loaded.config
    trained = TrainerConfig(**{k: v for k, v in (run_cfg.get("trainer") or {}).items()
                               if k in TrainerConfig.__dataclass_fields__ and k in ("precision", "limit_val_batches")})
    block = loaded.model.config.block_size
    module = GPTLitModule(loaded.model.config, tokenizer=loaded.tokenizer, gpt=loaded.model, run_config=run_cfg,
                          val_tokens_per_char=loaded.record["val_tokens_per_char"])
    if cfg.data.path:
        text = read_text(Path(cfg.data.path))
        tokens = encode(loaded.tokenizer, text)
        if len(tokens) < block + 1:
            raise DataError(f"{cfg.data.path} has {len(tokens)} tokens, fewer than the model's block_size+1")
        module.val_tokens_per_char = len(tokens) / len(text)
        windows = FixedWindows(tokens, block)
        loader = DataLoader(windows, batch_size=cfg.data.batch_size or 32)
        data, limit, name = dict(dataloaders=loader), 1.0, str(cfg.data.path)
    else:
        dm = own_split(loaded, cfg)
        windows = FixedWindows(dm.files.val, block)  # type: ignore[union-attr]  # what the module will score
        data, name = dict(datamodule=dm), "val split"
        limit = 1.0 if cfg.whole_split else trained.limit_val_batches
    trainer = L.Trainer(accelerator=device.type, devices=[device.index or 0] if device.type == "cuda" else 1,
                        precision=trained.precision, limit_val_batches=limit, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(module, verbose=False, **data)
    batches = trainer.num_val_batches[0]
    batch_size = cfg.data.batch_size or 32 if cfg.data.path else dm.config.val_batch_size or dm.config.batch_size
    scored = min(batches * batch_size, len(windows))
    result = {
        "checkpoint": str(loaded.path), "step": loaded.step, "data": name, "windows": scored,
        "tokens": scored * block, "loss": metrics["val/loss"], "perplexity": metrics["val/ppl"],
        "bpc": metrics["val/bpc"],
    }
    scope = ("every window" if limit == 1.0 else
             f"the {scored:,} windows the run's validation scored (trainer.limit_val_batches={limit}; "
             "whole_split=true scores all)")
    print(f"{'checkpoint':<12}{loaded.path} (step {loaded.step})\n{'data':<12}{name}: {scope}")
    print(f"{'tokens':<12}{result['tokens']:,}\n{'loss':<12}{result['loss']:.4f} nats/token")
    print(f"{'perplexity':<12}{result['perplexity']:.3f}\n{'bpc':<12}{result['bpc']:.4f} bits/char")
    stem = Path(name).stem.replace(" ", "-") if cfg.data.path else ("val-all" if limit == 1.0 else "val")
    out = loaded.path.with_name(f"eval-{loaded.path.stem}-{stem}.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"{'written':<12}{out}")
    return result


def own_split(loaded: checkpoint.Loaded, cfg: EvalConfig) -> TextDataModule:
    """The run's own data, found through the same token cache (its tokenizer settings give the same key)."""
    run_cfg = loaded.config
    if "data" not in run_cfg:
        raise GptlabError(f"{cfg.ckpt_path} has no validation split of its own: give data.path=TEXT_FILE")
    spec = DataConfig(**{k: v for k, v in run_cfg["data"].items() if k in DataConfig.__dataclass_fields__})
    if cfg.data.batch_size:
        spec = dataclasses.replace(spec, val_batch_size=cfg.data.batch_size)
    if run_cfg.get("init_from"):  # the data was encoded with the source's tokenizer, which the checkpoint holds
        settings: object = loaded.tokenizer
    else:  # the tokenizer was trained on the data: its settings, as the run passed them, give the same cache key
        settings = dataclasses.asdict(tokenizer_spec(run_cfg["tokenizer"]))
    dm = TextDataModule(spec, settings, block_size=loaded.model.config.block_size,
                        seed=run_cfg.get("seed", 0), cache_dir=cfg.paths.cache_dir, data_dir=cfg.paths.data_dir)
    dm.prepare_data()
    dm.setup("validate")
    if dm.tokenizer.to_dict() != loaded.tokenizer.to_dict():
        raise GptlabError("the data now gives a different tokenizer than the checkpoint's: has the text changed?")
    return dm


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="eval")
@cli.reports_errors
def _main(cfg: DictConfig) -> float:
    return run(cfg)["loss"]


def main() -> None:
    from gptlab.usage import entry_help

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no device banners around the table
    help_text = entry_help("Loss, perplexity and bits per character of a trained model.",
                           "ckpt_path=RUN_DIR [data.path=TEXT_FILE] [key=value ...]", EvalConfig)
    cli.run(_main, free_text=("ckpt_path", "data.path", "paths.data_dir", "paths.cache_dir"), help=help_text)


if __name__ == "__main__":
    main()
