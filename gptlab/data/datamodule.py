"""The LightningDataModule: text -> cached token files (once per node) -> batches of windows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

import lightning as L
import torch
from torch.utils.data import DataLoader

from gptlab.data.cache import TokenFiles, prepare_tokens
from gptlab.data.corpus import HF_PREFIX, Corpus
from gptlab.data.config import DataConfig
from gptlab.data.sources import SHAKESPEARE, DataError, find_or_download
from gptlab.data.windows import FixedWindows, RandomWindows, stream_start
from gptlab.tokenizers import Tokenizer


class TextDataModule(L.LightningDataModule):
    """Serves windows of a char- or BPE-tokenized corpus.

    The text is Tiny Shakespeare (found under the data dirs, or downloaded with its checksum verified)
    unless `config.path` names a file, a folder or a Hugging Face data set. Lightning calls `prepare_data`
    (tokenize into the cache) once per node, or once in all, then `setup` on every rank, which opens the
    ready token shards.
    """

    def __init__(self, config: DataConfig, tokenizer: Union[dict, Tokenizer], block_size: int, seed: int,
                 cache_dir: Union[str, Path], data_dir: Optional[str] = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer_spec = tokenizer  # settings to train one, or a ready tokenizer (a checkpoint's)
        self.block_size, self.seed = block_size, seed
        self.cache_dir, self.data_dir = Path(cache_dir), data_dir
        self.prepare_data_per_node = config.prepare_data_per_node
        self.files: Optional[TokenFiles] = None

    def _corpus(self) -> tuple[Corpus, str]:
        """The corpus and the name its cache entry starts with."""
        c = self.config
        if c.path is None:
            p = find_or_download(SHAKESPEARE.file, c.url or SHAKESPEARE.url, SHAKESPEARE.sha256, self.data_dir)
            return Corpus.from_path(p), SHAKESPEARE.name
        if c.path.startswith(HF_PREFIX):
            name = c.path[len(HF_PREFIX):]
            return Corpus.from_hf(name, c.hf_config, c.hf_split, c.text_field), _safe_name(Path(name).name or "hf")
        p = Path(c.path).expanduser()
        return Corpus.from_path(p, c.text_field), _safe_name(p.stem or "text")

    def _entry(self) -> Path:
        corpus, name = self._corpus()
        return prepare_tokens(corpus, name, self.tokenizer_spec, self.config.val_fraction, self.cache_dir,
                              num_proc=self.config.num_proc)

    def prepare_data(self) -> None:
        """Find (or download) the text and tokenize it into the cache; cheap when the entry exists."""
        self._entry()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.files is not None:
            return
        files = TokenFiles.open(self._entry())  # the entry is ready: this only fingerprints the corpus to find it
        need = self.block_size + 1
        for split in ("train", "val"):
            n = len(getattr(files, split))
            if n < need:
                raise DataError(f"the {split} split has {n:,} tokens, fewer than model.block_size+1={need}: "
                                "use a longer text, a smaller model.block_size, or another data.val_fraction")
        self.files = files

    @property
    def tokenizer(self) -> Tokenizer:
        assert self.files is not None, "call setup() first"
        return self.files.tokenizer

    def describe(self) -> str:
        """The data in one line, for the start of a run."""
        assert self.files is not None, "call setup() first"
        f = self.files
        return (f"{f.meta['name']}: {len(f.train):,} train and {len(f.val):,} val tokens, batches of "
                f"{self.config.batch_size} x {self.block_size}")

    @property
    def val_tokens_per_char(self) -> float:
        assert self.files is not None, "call setup() first"
        return self.files.val_tokens_per_char

    def train_dataloader(self) -> DataLoader:
        assert self.files is not None
        start, rank = stream_start(self.trainer)
        ds = RandomWindows(self.files.train, self.block_size, self.config.batch_size, self.seed, rank, start)
        return DataLoader(ds, batch_size=None, num_workers=self.config.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.config.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        assert self.files is not None
        return DataLoader(FixedWindows(self.files.val, self.block_size),
                          batch_size=self.config.val_batch_size or self.config.batch_size, shuffle=False,
                          num_workers=self.config.num_workers)


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "text"
