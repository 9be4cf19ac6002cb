"""From raw text to batches: find the documents, tokenize them once into cached token shards, serve windows.

Names are imported on first use, so preparing tokens (and its worker processes) does not import torch and
Lightning, which only the DataModules (data/datamodule.py) and the windows need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "TextDataModule": "datamodule", "DataConfig": "config", "KINDS": "config",
    "ChatDataModule": "datamodule", "Corpus": "corpus", "TokenFiles": "cache",
    "token_entry": "tokens", "open_tokens": "tokens",
    "encode": "cache", "prepare_tokens": "cache", "TokenShards": "shards", "DataError": "sources",
    "read_text": "sources", "RandomWindows": "windows", "FixedWindows": "windows",
}
__all__ = [*_HOMES, "make_datamodule"]

if TYPE_CHECKING:
    from gptlab.data.cache import TokenFiles, encode, prepare_tokens
    from gptlab.data.corpus import Corpus
    from gptlab.data.config import KINDS, DataConfig
    from gptlab.data.datamodule import ChatDataModule, TextDataModule
    from gptlab.data.shards import TokenShards
    from gptlab.data.sources import DataError, read_text
    from gptlab.data.tokens import open_tokens, token_entry
    from gptlab.data.windows import FixedWindows, RandomWindows


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def make_datamodule(config: DataConfig, tokenizer: Any, block_size: int, seed: int, cache_dir: Any,
                    data_dir: Any = None, questions: bool = False) -> Any:
    """The DataModule of config.kind: TextDataModule (windows) or ChatDataModule (conversations; with questions=True,
    the questions they ask, for objective=grpo)."""
    if config.kind == "chat":
        return __getattr__("ChatDataModule")(config, tokenizer, block_size, seed, cache_dir, data_dir, questions)
    if questions:
        raise __getattr__("DataError")("objective=grpo learns from conversations whose answers can be checked: use data=chat "
                        "data.path=FILE_OR_FOLDER (scripts/make_tasks.py writes one)")
    return __getattr__("TextDataModule")(config, tokenizer, block_size, seed, cache_dir, data_dir)
