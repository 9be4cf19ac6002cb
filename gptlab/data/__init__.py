"""From raw text to batches: find the documents, tokenize them once into cached token shards, serve windows.

Names are imported on first use, so preparing tokens (and its worker processes) does not import torch and
Lightning, which only the DataModule and the windows need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "TextDataModule": "datamodule", "DataConfig": "datamodule", "make_datamodule": "datamodule",
    "ChatDataModule": "chat", "Corpus": "corpus", "TokenFiles": "cache",
    "encode": "cache", "prepare_tokens": "cache", "TokenShards": "shards", "DataError": "sources",
    "read_text": "sources", "RandomWindows": "windows", "FixedWindows": "windows",
}
__all__ = list(_HOMES)

if TYPE_CHECKING:
    from gptlab.data.cache import TokenFiles, encode, prepare_tokens
    from gptlab.data.corpus import Corpus
    from gptlab.data.chat import ChatDataModule
    from gptlab.data.datamodule import DataConfig, TextDataModule, make_datamodule
    from gptlab.data.shards import TokenShards
    from gptlab.data.sources import DataError, read_text
    from gptlab.data.windows import FixedWindows, RandomWindows


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
