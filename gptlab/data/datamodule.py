"""The LightningDataModule: text -> cached token files (once) -> batches of windows."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from gptlab.data.cache import TokenFiles, prepare_tokens
from gptlab.data.sources import SHAKESPEARE_FILE, DataError, find_or_download, read_text
from gptlab.data.windows import FixedWindows, RandomWindows
from gptlab.tokenizers import Tokenizer


class TextDataModule(L.LightningDataModule):
    """Serves windows of a char- or BPE-tokenized corpus.

    source="shakespeare": Tiny Shakespeare, found under the data dirs or downloaded (checksum verified).
    source="text": `path`, a UTF-8 file or a folder of .txt files.
    """

    def __init__(
        self,
        source: str = "shakespeare",
        path: Optional[str] = None,
        url: Optional[str] = None,
        sha256: Optional[str] = None,
        data_dir: Optional[str] = None,
        cache_dir: str = "data/cache",
        tokenizer: Optional[dict] = None,
        val_fraction: float = 0.1,
        block_size: int = 128,
        batch_size: int = 64,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if source not in ("shakespeare", "text"):
            raise DataError(f"data.source={source!r} is not one of: shakespeare, text")
        if source == "text" and not path:
            raise DataError("data=text needs a file: add data.path=FILE_OR_FOLDER")
        self.source, self.path, self.url, self.sha256 = source, path, url, sha256
        self.data_dir, self.cache_dir = data_dir, Path(cache_dir)
        self.tokenizer_cfg = dict(tokenizer or {"kind": "char"})
        self.val_fraction, self.block_size, self.batch_size = val_fraction, block_size, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self._entry: Optional[Path] = None
        self.files: Optional[TokenFiles] = None

    def _text(self) -> tuple[str, str]:
        if self.source == "shakespeare":
            assert self.url is not None
            p = find_or_download(SHAKESPEARE_FILE, self.url, self.sha256, self.data_dir)
            return read_text(p), "shakespeare"
        p = Path(self.path).expanduser()  # type: ignore[arg-type]
        return read_text(p), p.stem or "text"

    def prepare_data(self) -> None:
        """Find (or download) the text and tokenize it into the cache; cheap when the entry exists."""
        if self._entry is None:
            text, name = self._text()
            self._entry = prepare_tokens(text, name, self.tokenizer_cfg, self.val_fraction, self.cache_dir)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.files is not None:
            return
        self.prepare_data()  # on ranks that skipped prepare_data this only locates the (ready) entry
        files = TokenFiles.open(self._entry)  # type: ignore[arg-type]
        need = self.block_size + 1
        for split in ("train", "val"):
            n = len(getattr(files, split))
            if n < need:
                raise DataError(
                    f"the {split} split has {n:,} tokens, fewer than model.block_size+1={need}: "
                    "use a longer text, a smaller model.block_size, or another data.val_fraction"
                )
        self.files = files

    @property
    def tokenizer(self) -> Tokenizer:
        assert self.files is not None, "call setup() first"
        return self.files.tokenizer

    def train_dataloader(self) -> DataLoader:
        assert self.files is not None
        trainer = self.trainer
        # resuming: skip the batches the checkpointed run already trained on
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        rank = trainer.global_rank if trainer else 0
        ds = RandomWindows(self.files.train, self.block_size, self.batch_size, self.seed, rank, start)
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        assert self.files is not None
        return DataLoader(FixedWindows(self.files.val, self.block_size), batch_size=self.val_batch_size,
                          shuffle=False, num_workers=self.num_workers)
