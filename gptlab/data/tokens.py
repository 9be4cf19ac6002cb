"""A text run's token files, without Lightning: the corpus its data settings name, tokenized into the cache once
(found there after that), opened and checked against the model's context. TextDataModule serves its windows from
them in training; `gptlab eval` finds the run's own validation split through them, with the same cache key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

from gptlab.data.cache import TokenFiles, prepare_tokens
from gptlab.data.config import DataConfig
from gptlab.data.corpus import HF_PREFIX, Corpus
from gptlab.data.sources import SHAKESPEARE, DataError, find_or_download
from gptlab.tokenizers import Tokenizer


def find_corpus(config: DataConfig, data_dir: Optional[str] = None) -> tuple[Corpus, str]:
    """The corpus of `config` and the name its cache entry starts with: Tiny Shakespeare (found under the data
    dirs, or downloaded with its checksum verified) unless `config.path` names a file, a folder or `hf:NAME`."""
    if config.path is None:
        p = find_or_download(SHAKESPEARE.file, config.url or SHAKESPEARE.url, SHAKESPEARE.sha256, data_dir)
        return Corpus.from_path(p), SHAKESPEARE.name
    if config.path.startswith(HF_PREFIX):
        name = config.path[len(HF_PREFIX):]
        return (Corpus.from_hf(name, config.hf_config, config.hf_split, config.text_field),
                _safe_name(Path(name).name or "hf"))
    p = Path(config.path).expanduser()
    return Corpus.from_path(p, config.text_field), _safe_name(p.stem or "text")


def token_entry(config: DataConfig, tokenizer: Union[dict, Tokenizer], cache_dir: Union[str, Path],
                data_dir: Optional[str] = None) -> Path:
    """The cache entry of this data and tokenizer (settings to train one, or a ready one), tokenized first if
    it is not there yet; cheap when it is (the corpus is only fingerprinted)."""
    corpus, name = find_corpus(config, data_dir)
    return prepare_tokens(corpus, name, tokenizer, config.val_fraction, Path(cache_dir), num_proc=config.num_proc)


def open_tokens(config: DataConfig, tokenizer: Union[dict, Tokenizer], block_size: int, cache_dir: Union[str, Path],
                data_dir: Optional[str] = None) -> TokenFiles:
    """Both splits' token files, each checked to hold at least one window of block_size + 1 tokens."""
    files = TokenFiles.open(token_entry(config, tokenizer, cache_dir, data_dir))
    need = block_size + 1
    for split in ("train", "val"):
        n = len(getattr(files, split))
        if n < need:
            raise DataError(f"the {split} split has {n:,} tokens, fewer than model.block_size+1={need}: "
                            "use a longer text, a smaller model.block_size, or another data.val_fraction")
    return files


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "text"
