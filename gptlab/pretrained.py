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
from gptlab.model import GPT
from gptlab.model.hf_gpt2 import gpt_from_hf_folder
from gptlab.rundir import RunDir
from gptlab.tokenizers import ByteLevelBPE

NAMES = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
         "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl"}
FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "generation_config.json"]


def is_pretrained(source: Union[str, Path]) -> bool:
    """A GPT-2 name that is not a local path, or a folder in the Hugging Face layout."""
    p = Path(source).expanduser()
    if p.exists():
        return p.is_dir() and (p / "config.json").is_file() and not RunDir(p).is_run()
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
    model = gpt_from_hf_folder(path)
    if not ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
        raise GptlabError(f"{path} has no vocab.json and merges.txt: GPT-2's tokenizer is needed beside the weights")
    tokenizer = ByteLevelBPE.from_vocab_merges(path / "vocab.json", path / "merges.txt")
    if tokenizer.vocab_size > (model.config.vocab_size or 0):
        raise GptlabError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                          f"vocab_size={model.config.vocab_size}")
    return model, tokenizer, path

