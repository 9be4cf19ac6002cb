"""The checkpoint contract: what a gptlab checkpoint holds beside Lightning's own entries, and loading it
back (model + tokenizer + the run's settings) without Lightning or Hydra.

A checkpoint is Lightning's file (`state_dict` with `model.*` keys, optimizer and loop state) plus a
`gptlab` entry, written by the LightningModule through `record()`:

    {"format": 2,
     "model": {...},              # the GPTConfig the weights belong to (vocab_size resolved)
     "tokenizer": {...},          # the trained tokenizer, whole (Tokenizer.to_dict)
     "val_tokens_per_char": 1.0,  # of the run's val split: turns nats/token into bits/char
     "config": {...}}             # the run's composed config (data, trainer, optim, scheduler, seed...), its
                                  # interpolations kept (${paths.output_dir} means the reader's folder); data.path
                                  # absolute; paths, ckpt_path and hydra left out

A run of objective=grpo also keeps `reference_state_dict`: the weights it started from, the model its KL is measured
against (loaders ignore it).

A run of finetune=lora records its adapters' settings and what they sit on, `"lora": {"config": {...}, "base":
"gpt2" or a path, or None, "checksum": ..., "new_tokens_from": the first token row that trained (the first the
base lacked; 0 with lora.tokens=all), or None}`; with a base, its `state_dict` holds the adapters alone (a few MB
for GPT-2) and the trained rows of the token table (`lora_new_tokens`: chat markers, new characters), and `load` rebuilds the base from where it was, checks it is the same (`base_checksum`) and folds the
adapters in. Without one (adapters on a model trained from scratch) the state_dict holds every weight.

`load` checks the format: format 1 (gptlab 0.1, settings in Lightning's `hyper_parameters`) is converted
on the fly; a newer format than this gptlab knows is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from gptlab import pretrained
from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig, LoRAConfig, adapt, add_lora, merge_lora
from gptlab.model.lora import base_checksum
from gptlab.rundir import find_checkpoint
from gptlab.tokenizers import Tokenizer, tokenizer_from_dict

FORMAT = 2
REFERENCE = "reference_state_dict"  # an RL run's start weights, beside Lightning's state_dict
NEW_TOKENS = "model.lora_new_tokens"  # a LoRA run's trained rows of the tokens its base lacks, in its state_dict
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # for inference


def record(model: GPTConfig, tokenizer: Tokenizer, config: dict, val_tokens_per_char: float) -> dict:
    """The `gptlab` entry of a checkpoint."""
    return {"format": FORMAT, "model": model.to_dict(), "tokenizer": tokenizer.to_dict(),
            "val_tokens_per_char": val_tokens_per_char, "config": config}


def save(path: Union[str, Path], model: GPT, tokenizer: Tokenizer, config: Optional[dict] = None) -> Path:
    """A checkpoint of a model that was not trained by gptlab.train (built at random, or changed by hand), which
    `load` and every entry point read back; it has no optimizer or loop state, so it cannot be resumed."""
    state = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 0,
                "gptlab": record(model.config, tokenizer, config or {}, 1.0)}, path)
    return Path(path)


def _from_format_1(ckpt: dict) -> dict:
    """gptlab 0.1 kept its settings in Lightning's hyper_parameters; the data source was named."""
    hp = ckpt["hyper_parameters"]
    data = hp.get("data") or {}
    config = {"model": hp["model"], "tokenizer": data.get("tokenizer", {"kind": hp["tokenizer"]["kind"]}),
              "data": {"path": data.get("path"), "val_fraction": data.get("val_fraction", 0.1)},
              "scheduler": hp.get("scheduler") or {}, "compile": hp.get("compile", False)}
    return {"format": FORMAT, "model": hp["model"], "tokenizer": hp["tokenizer"],
            "val_tokens_per_char": hp.get("val_tokens_per_char", 1.0), "config": config}


def read_record(ckpt: Any, path: Path) -> dict:
    """The checkpoint's `gptlab` entry in the current format; one line if it has none or a newer one."""
    if not isinstance(ckpt, dict) or "gptlab" not in ckpt:
        raise GptlabError(f"{path} is not a gptlab checkpoint (no 'gptlab' entry): train one with gptlab.train")
    fmt = ckpt["gptlab"].get("format") if isinstance(ckpt["gptlab"], dict) else None
    if fmt == 1:
        return _from_format_1(ckpt)
    if fmt == FORMAT:
        return ckpt["gptlab"]
    if isinstance(fmt, int) and fmt > FORMAT:
        raise GptlabError(f"{path} has checkpoint format {fmt}, newer than this gptlab reads ({FORMAT}): "
                          "upgrade gptlab (pip install -U gptlab, or git pull)")
    raise GptlabError(f"{path} has an unknown checkpoint format {fmt!r}: it was not written by gptlab.train")


def read(path: Path, map_location: Optional[Union[str, torch.device]] = "cpu") -> dict:
    """The checkpoint file's contents (tensors only: `weights_only`, so nothing in it runs as code)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # not a torch file at all, truncated, or one holding arbitrary objects
        raise GptlabError(f"{path} is not a readable gptlab checkpoint ({type(e).__name__}): "
                          "it may be damaged; use another checkpoint of the run") from None


@dataclass
class Loaded:
    model: GPT
    tokenizer: Tokenizer
    path: Path
    step: int
    record: dict = field(default_factory=dict)  # the `gptlab` entry, current format

    @property
    def config(self) -> dict:
        """The run's composed config as the checkpoint recorded it."""
        return self.record["config"]


def load(path: Union[str, Path], device: Union[str, torch.device] = "cpu", dtype: Optional[str] = None,
         merge: bool = True) -> Loaded:
    """Rebuild the model (weights loaded, on `device`, eval mode) and tokenizer from a checkpoint or run dir,
    or from pretrained GPT-2 (`gpt2`, ..., `gpt2-xl`, or a Hugging Face folder: see gptlab.pretrained).
    dtype: a key of DTYPES to cast the weights to, for inference (None: as stored, float32). A LoRA run's adapters
    are folded into the weights, unless merge=False (the export of the adapters themselves)."""
    to = (device,) if dtype is None else (device, DTYPES[dtype])
    if pretrained.is_pretrained(path):
        model, tokenizer, folder = pretrained.load(path)
        rec = record(model.config, tokenizer, {"init_from": str(path)}, 1.0)
        return Loaded(model.to(*to).eval(), tokenizer, folder, 0, rec)
    ckpt_path = find_checkpoint(path)
    ckpt = read(ckpt_path)
    rec = read_record(ckpt, ckpt_path)
    model = GPT(GPTConfig(**rec["model"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()
             if k.startswith("model.") and k != NEW_TOKENS}
    lora = rec.get("lora")
    if lora:  # the adapters on their base, folded in: inference runs a plain GPT
        if lora["base"]:
            model = lora_base(lora, model.config, ckpt_path, ckpt["state_dict"].get(NEW_TOKENS))
        add_lora(model, LoRAConfig(**lora["config"]))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or (missing if not lora["base"] else [k for k in missing if ".lora_" in k]):
            raise GptlabError(f"{ckpt_path} does not hold the adapters its record describes: it may be damaged")
        if merge:
            merge_lora(model)
    else:
        model.load_state_dict(state)
    model.to(*to).eval()
    return Loaded(model, tokenizer_from_dict(rec["tokenizer"]), ckpt_path, int(ckpt.get("global_step", 0)), rec)


def lora_base(lora: dict, spec: GPTConfig, path: Path, new_rows: Optional[torch.Tensor] = None) -> GPT:
    """The model a LoRA run's adapters sit on, rebuilt from its base as the run built it (`adapt`: the source's
    weights for the run's context and tokens), checked to be the same weights, with the run's trained rows of the
    tokens the base lacked (`new_rows`, the checkpoint's NEW_TOKENS) put in."""
    source = lora["base"]
    try:
        model = adapt(load(source).model, spec)
    except GptlabError as e:
        raise GptlabError(f"the base of {path}'s adapters, {source}, cannot be loaded: {e}") from None
    if base_checksum(model) != lora["checksum"]:
        raise GptlabError(f"{source} is not the base the adapters of {path} were trained on (its weights changed "
                          f"since: checksum {base_checksum(model)}, the adapters' {lora['checksum']}): "
                          "restore that base, or train the adapters again on this one")
    if new_rows is not None:
        with torch.no_grad():
            model.transformer.wte.weight[lora["new_tokens_from"]:] = new_rows
    return model
