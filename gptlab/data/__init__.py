"""From raw text to batches: find the text, tokenize it once into cached token files, serve windows."""

from gptlab.data.cache import TokenFiles, encode, prepare_tokens
from gptlab.data.datamodule import DataConfig, TextDataModule
from gptlab.data.sources import DataError, read_text
from gptlab.data.windows import FixedWindows, RandomWindows

__all__ = ["TextDataModule", "DataConfig", "TokenFiles", "encode", "prepare_tokens", "DataError", "read_text",
           "RandomWindows", "FixedWindows"]
