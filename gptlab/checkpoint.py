"""Load a trained GPT and its tokenizer from a checkpoint file or a run dir, without Lightning or Hydra."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizers import Tokenizer, tokenizer_from_dict


def resolve_checkpoint(path: Union[str, Path], prefer: tuple[str, ...] = ("best.ckpt", "last.ckpt")) -> Path:
    """A .ckpt file as is; a run dir -> its checkpoints/best.ckpt, else checkpoints/last.ckpt."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for folder in (p / "checkpoints", p):
            for name in prefer:
                if (folder / name).is_file():
                    return folder / name
        raise GptlabError(f"no checkpoint in {p}: expected checkpoints/{' or checkpoints/'.join(prefer)} inside it")
    raise GptlabError(f"checkpoint {p} does not exist: give a .ckpt file or a run dir under outputs/")


@dataclass
class Loaded:
    model: GPT
    tokenizer: Tokenizer
    path: Path
    step: int
    hparams: dict


def load(path: Union[str, Path], map_location: Optional[str] = "cpu") -> Loaded:
    """Rebuild the model (weights loaded, eval mode) and tokenizer from a gptlab checkpoint."""
    ckpt_path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except Exception as e:  # not a torch file at all, or one holding arbitrary objects
        raise GptlabError(f"{ckpt_path} is not a readable gptlab checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "gptlab" not in ckpt:
        raise GptlabError(f"{ckpt_path} is not a gptlab checkpoint (no 'gptlab' entry): train one with gptlab.train")
    hp = ckpt["hyper_parameters"]
    model = GPT(GPTConfig(**hp["model"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.eval()
    return Loaded(model, tokenizer_from_dict(hp["tokenizer"]), ckpt_path, int(ckpt.get("global_step", 0)), hp)
