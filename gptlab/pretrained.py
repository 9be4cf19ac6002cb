"""Pretrained GPT-2: `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, or a local folder in the Hugging Face
layout (config.json, model.safetensors or pytorch_model.bin, vocab.json, merges.txt), as a gptlab GPT and
byte-level BPE tokenizer.

Names resolve through the Hugging Face cache and are downloaded (with a progress bar) when online, through
`huggingface_hub` (`pip install -e ".[hf]"`). Nothing unpickles code: safetensors, or torch's weights_only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model.hf_gpt2 import load_hf_folder
from gptlab.tokenizers import ByteLevelBPE

NAMES = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
         "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl"}
FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "generation_config.json"]


def is_pretrained(source: Union[str, Path]) -> bool:
    """A GPT-2 name that is not a local path, or a folder in the Hugging Face layout."""
    p = Path(source).expanduser()
    if p.exists():
        return p.is_dir() and (p / "config.json").is_file() and not (p / "checkpoints").is_dir()
    return str(source) in NAMES


def folder(source: Union[str, Path]) -> Path:
    """The local folder of a source: as given, or the Hugging Face cache's snapshot of a GPT-2 name
    (downloaded first when it is not there and the hub can be reached)."""
    p = Path(source).expanduser()
    if p.exists():
        return p
    repo = NAMES[str(source)]
    where = os.environ.get("HF_HOME", "~/.cache/huggingface")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise GptlabError(f"loading {source} by name needs huggingface_hub: pip install -e \".[hf]\"; or download "
                          f"{', '.join(FILES[:4])} from huggingface.co/{repo} into a folder and pass its path") from None
    try:
        return Path(snapshot_download(repo, allow_patterns=FILES))
    except Exception as e:  # offline, or the hub refused: say where the files should go
        raise GptlabError(f"{source} is not in the Hugging Face cache ({where}) and could not be downloaded "
                          f"({type(e).__name__}); when online it downloads once, or put {', '.join(FILES[:4])} "
                          "in a folder and pass the folder's path") from None


def load(source: Union[str, Path]) -> tuple[GPT, ByteLevelBPE, Path]:
    """The GPT (weights loaded, eval mode) and GPT-2's tokenizer of a pretrained source, and its folder."""
    path = folder(source)
    config, state = load_hf_folder(path)
    if not ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
        raise GptlabError(f"{path} has no vocab.json and merges.txt: GPT-2's tokenizer is needed beside the weights")
    tokenizer = ByteLevelBPE.from_vocab_merges(path / "vocab.json", path / "merges.txt")
    if tokenizer.vocab_size > (config.vocab_size or 0):
        raise GptlabError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                          f"vocab_size={config.vocab_size}")
    model = GPT(config)
    model.load_state_dict(state)
    return model.eval(), tokenizer, path


def adapt(model: GPT, spec: GPTConfig) -> GPT:
    """A GPT of `spec` holding `model`'s weights: the position table cut to a smaller block_size, new
    embedding rows (initialised as a fresh model's) for a larger vocab_size; dropout and the attention path
    need no weights."""
    old = model.config
    if spec.block_size > old.block_size:
        raise GptlabError(f"model.block_size={spec.block_size} is larger than the source's {old.block_size}: "
                          "positions past it were never trained; use at most that")
    if (spec.vocab_size or 0) < (old.vocab_size or 0):
        raise GptlabError(f"model.vocab_size={spec.vocab_size} is smaller than the source's {old.vocab_size}")
    new = GPT(spec)
    state = model.state_dict()
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][: spec.block_size]
    for key in ("transformer.wte.weight", "lm_head.weight"):
        if key in state and state[key].size(0) < (spec.vocab_size or 0):
            fresh = new.state_dict()[key].clone()
            fresh[: state[key].size(0)] = state[key]
            state[key] = fresh
    new.load_state_dict(state)
    return new
