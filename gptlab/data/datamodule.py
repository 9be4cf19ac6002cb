"""The LightningDataModules: text -> cached token files (once per node) -> batches of windows (TextDataModule), and
conversations -> masked rows -> padded batches (ChatDataModule). What they serve is made by plain modules beside
them (data/tokens.py, data/chat.py), which gptlab eval reads without Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import lightning as L
import torch
from torch.utils.data import DataLoader

from gptlab.data.cache import TokenFiles
from gptlab.data.chat import (PAD_TO, Conversation, Question, RandomConversations, RandomQuestions, Rows,
                              chat_vocabulary, check_room, encode, loader, questions, split, summary, tokens_per_char)
from gptlab.data.config import DataConfig
from gptlab.data.sources import DataError
from gptlab.data.tokens import open_tokens, token_entry
from gptlab.data.windows import BatchStream, FixedWindows, RandomWindows, stream_start
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

    def prepare_data(self) -> None:
        """Find (or download) the text and tokenize it into the cache; cheap when the entry exists."""
        token_entry(self.config, self.tokenizer_spec, self.cache_dir, self.data_dir)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.files is None:  # the entry is ready: this only fingerprints the corpus to find it
            self.files = open_tokens(self.config, self.tokenizer_spec, self.block_size, self.cache_dir, self.data_dir)

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


class ChatDataModule(L.LightningDataModule):
    """Serves padded batches of conversations: data=chat data.path=FILE_OR_FOLDER.

    Reading and rendering a few hundred thousand short conversations takes seconds, so nothing is cached:
    every rank does it in `setup`. The tokenizer is the given one (a checkpoint's, grown by what the data
    needs) or one trained on the conversations' text; either way it has the template's markers.
    """

    def __init__(self, config: DataConfig, tokenizer: Union[dict, Tokenizer], block_size: int, seed: int,
                 cache_dir: Union[str, Path, None] = None, data_dir: Optional[str] = None,
                 serve_questions: bool = False) -> None:
        super().__init__()
        if not config.path:
            raise DataError("data=chat needs data.path=FILE_OR_FOLDER: a .jsonl file of conversations, or a folder "
                            "(with train.jsonl and val.jsonl, it is split by them); scripts/make_tasks.py writes one")
        self.config, self.tokenizer_spec, self.block_size, self.seed = config, tokenizer, block_size, seed
        self.train_rows: Optional[Rows] = None
        self.val_rows: Optional[Rows] = None
        self.val_conversations: list[Conversation] = []
        # objective=grpo: training batches are questions (their indices) to answer, not rows to learn
        self.serve_questions = serve_questions
        self.train_questions: list[Question] = []
        self.val_questions: list[Question] = []
        self._tokenizer: Optional[Tokenizer] = None
        self.summary = ""

    def prepare_data(self) -> None:
        """Read and check the data before the run writes anything (Lightning calls this first, on one rank per
        node): a bad line stops the run with no logs behind it."""
        self.setup()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_rows is not None:
            return
        train, val, how = split(self.config.path, self.config.val_fraction)  # type: ignore[arg-type]
        self.val_conversations = val
        self._tokenizer = chat_vocabulary(self.tokenizer_spec, train + val)
        limit = self.block_size + 1  # a row of block_size + 1 ids gives block_size inputs and targets
        self.train_rows = encode(self._tokenizer, train, limit, self.config.overflow, self.config.loss_on)
        self.val_rows = encode(self._tokenizer, val, limit, self.config.overflow)  # val/loss: on the answers either way
        for name, rows in (("train", self.train_rows), ("val", self.val_rows)):
            if not len(rows):
                raise DataError(f"no {name} conversation fits the model's context of {limit} tokens: raise "
                                "model.block_size, or use data.overflow=truncate")
        self.summary = summary(self.train_rows, self.val_rows, how, limit, self.config.overflow)
        if self.serve_questions:  # prompts as eval's exact match gives them
            self.train_questions = questions(self._tokenizer, train, self.block_size)
            self.val_questions = questions(self._tokenizer, val, self.block_size)
            check_room(self.train_questions + self.val_questions, self.block_size)
            self.summary += f"; {len(self.train_questions):,} train questions"

    def describe(self) -> str:
        """The data in one line, for the start of a run."""
        if self.serve_questions:
            return f"{self.summary}; {self.config.batch_size} a step"
        return f"{self.summary}; batches of {self.config.batch_size} padded to their longest (a multiple of {PAD_TO})"

    @property
    def tokenizer(self) -> Tokenizer:
        assert self._tokenizer is not None, "call setup() first"
        return self._tokenizer

    @property
    def val_tokens_per_char(self) -> float:
        assert self.val_rows is not None, "call setup() first"
        return tokens_per_char(self.val_rows, self.tokenizer)

    def train_dataloader(self) -> DataLoader:
        assert self.train_rows is not None
        start, rank = stream_start(self.trainer)
        if self.serve_questions:
            ds: BatchStream = RandomQuestions(len(self.train_questions), self.config.batch_size, self.seed, rank, start)
        else:
            ds = RandomConversations(self.train_rows, self.config.batch_size, self.seed, rank, start)
        return DataLoader(ds, batch_size=None, num_workers=self.config.num_workers,
                          persistent_workers=self.config.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        assert self.val_rows is not None
        return loader(self.val_rows, self.config.val_batch_size or self.config.batch_size)
