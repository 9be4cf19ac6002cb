"""Evaluate a checkpoint: `python -m gptlab.eval ckpt_path=RUN_DIR [data.path=other.txt]`.

Loss (nats per token), perplexity and bits per character, over every window of the checkpoint's own
validation split or of any text file encoded with the checkpoint's tokenizer. The table is printed and
written as JSON next to the checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from gptlab import checkpoint, cli
from gptlab.config import register_configs
from gptlab.data import DataError, FixedWindows, TextDataModule, read_text
from gptlab.data.cache import encode
from gptlab.devices import pick_device
from gptlab.errors import GptlabError
from gptlab.model import GPT

register_configs()


@torch.no_grad()
def mean_loss(model: GPT, tokens: np.ndarray, batch_size: int, max_batches, device) -> tuple[float, int]:
    """Mean cross-entropy over fixed non-overlapping windows; returns (loss, tokens scored)."""
    windows = FixedWindows(tokens, model.config.block_size)
    total, count = 0.0, 0
    for i, (x, y) in enumerate(DataLoader(windows, batch_size=batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
        count += y.numel()
    return total / count, count


def own_val_split(loaded: checkpoint.Loaded, cfg: DictConfig) -> tuple[np.ndarray, float, str]:
    src = loaded.hparams.get("data")
    if not src:
        raise GptlabError(f"{loaded.path} does not record its data: pass data.path=FILE to evaluate on a text")
    dm = TextDataModule(source=src["source"], path=src["path"], url=src["url"], sha256=src["sha256"],
                        data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, tokenizer=src["tokenizer"],
                        val_fraction=src["val_fraction"], block_size=loaded.model.config.block_size)
    dm.setup("validate")
    if dm.tokenizer.to_dict() != loaded.tokenizer.to_dict():
        raise GptlabError("the data now gives a different tokenizer than the checkpoint's: has the text changed?")
    return dm.files.val, dm.files.val_tokens_per_char, f"{src['source']} val split"  # type: ignore[union-attr]


def other_text(loaded: checkpoint.Loaded, path: str) -> tuple[np.ndarray, float, str]:
    text = read_text(Path(path))
    tokens = encode(loaded.tokenizer, text)
    if len(tokens) < loaded.model.config.block_size + 1:
        raise DataError(f"{path} has {len(tokens)} tokens, fewer than the model's block_size+1")
    return tokens, len(tokens) / len(text), str(path)


def run(cfg: DictConfig) -> dict:
    device = pick_device(cfg.device)
    loaded = checkpoint.load(cfg.ckpt_path, map_location=str(device))
    tokens, tokens_per_char, name = (other_text(loaded, cfg.data.path) if cfg.data.path
                                     else own_val_split(loaded, cfg))
    loss, scored = mean_loss(loaded.model, tokens, cfg.data.batch_size, cfg.data.max_batches, device)
    result = {
        "checkpoint": str(loaded.path), "step": loaded.step, "data": name, "tokens": scored,
        "loss": loss, "perplexity": math.exp(loss), "bpc": loss / math.log(2) * tokens_per_char,
    }
    print(f"{'checkpoint':<12}{loaded.path} (step {loaded.step})\n{'data':<12}{name}")
    print(f"{'tokens':<12}{scored:,}\n{'loss':<12}{loss:.4f} nats/token")
    print(f"{'perplexity':<12}{result['perplexity']:.3f}\n{'bpc':<12}{result['bpc']:.4f} bits/char")
    stem = Path(name).stem.replace(" ", "-") if cfg.data.path else "val"
    out = loaded.path.with_name(f"eval-{loaded.path.stem}-{stem}.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"{'written':<12}{out}")
    return result


@hydra.main(version_base="1.3", config_path="pkg://gptlab.conf", config_name="eval")
@cli.reports_errors
def _main(cfg: DictConfig) -> float:
    return run(cfg)["loss"]


def main() -> None:
    cli.run(_main)


if __name__ == "__main__":
    main()
