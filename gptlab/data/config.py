"""What to train on and how it is batched: the data's typed settings (data=..., data.path=...), apart from the
DataModules that serve them, so that reading a config imports neither torch's loaders nor Lightning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from gptlab.data.sources import DataError

KINDS = ("text", "chat")


@dataclass
class DataConfig:
    """Tiny Shakespeare (1.1M characters), found or downloaded; data.path=FILE_OR_FOLDER for your own text.

    What to train on and how it is batched. Paths, block size and seed come from their own settings
    (paths.*, model.block_size, seed) and are handed to the TextDataModule beside this."""

    kind: str = "text"  # text: windows of one token stream; chat: whole conversations from JSONL (data=chat)
    path: Optional[str] = None  # a file, a folder (.txt .md .jsonl .parquet below it), hf:NAME; None: Tiny Shakespeare
    url: Optional[str] = None  # Tiny Shakespeare's download address when not on disk; None: its usual one
    val_fraction: float = 0.1  # one text: its last 10%; several documents: every 10th document
    text_field: str = "text"  # the field holding the text in .jsonl and .parquet records and Hugging Face data sets
    hf_config: Optional[str] = None  # with data.path=hf:NAME: the data set's configuration (subset), if it has several
    hf_split: str = "train"  # with data.path=hf:NAME: the split of the data set to read
    num_proc: Optional[int] = None  # processes that tokenize the corpus; None: one per core; 1: no extra process
    batch_size: int = 64
    val_batch_size: Optional[int] = None  # None: batch_size; evaluation holds no gradients, so larger is fine
    num_workers: int = 0  # batches are cheap numpy gathers; workers only pay off on fast GPUs
    prepare_data_per_node: bool = True  # tokenize once per node (False: once in all, on a shared filesystem)
    overflow: str = "truncate"  # chat: a conversation longer than the context is cut (truncate) or left out (drop)
    loss_on: str = "answers"  # chat: the tokens the loss covers: answers (each answer and its end marker), or all

    # how the data is served, not what it is: a resumed run may change these (the others make its data stream)
    CHANGEABLE_ON_RESUME: ClassVar[tuple[str, ...]] = (
        "num_proc", "batch_size", "val_batch_size", "num_workers", "prepare_data_per_node", "overflow", "loss_on")

    def __post_init__(self) -> None:
        for name, allowed in (("kind", KINDS), ("overflow", ("truncate", "drop")), ("loss_on", ("answers", "all"))):
            if getattr(self, name) not in allowed:
                raise DataError(f"data.{name}={getattr(self, name)} is not one of {', '.join(allowed)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        for name, low, note in (("batch_size", 1, ""), ("val_batch_size", 1, ""), ("num_workers", 0, ""),
                                ("num_proc", 1, " (or null: one per core)")):
            value = getattr(self, name)
            if value is not None and value < low:
                raise DataError(f"data.{name} must be >= {low}{note}, got {value}")
        if not self.text_field:
            raise DataError("data.text_field must name the field that holds the text")
