"""Windows of block_size+1 tokens: inputs are the first block_size, targets the same shifted by one.

`tokens` is anything indexed like a 1-D numpy array: a memory-mapped file, or a split's shards read as
one array (`TokenShards`), where a window may run from one shard into the next."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info


def gather(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows tokens[s : s + block_size + 1] for each start s -> x (B, T), y (B, T), int64."""
    w = torch.from_numpy(tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))
    return w[:, :-1], w[:, 1:]


class BatchStream(IterableDataset):
    """An endless stream of training batches where batch i is `self.batch(i)`, starting at `start_batch`: any
    number of loader workers yield the same sequence (the DataLoader takes from its workers in turn)."""

    start_batch: int

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        i = self.start_batch + worker
        while True:
            yield self.batch(i)
            i += workers


def stream_start(trainer) -> tuple[int, int]:
    """(first batch, rank) of a trainer's stream: a resumed run skips the batches it already trained on."""
    if trainer is None:
        return 0, 0
    return trainer.global_step * trainer.accumulate_grad_batches, trainer.global_rank


class RandomWindows(BatchStream):
    """An endless stream of training batches of random windows.

    Batch i is a pure function of (seed, rank, i): runs are reproducible, each DDP rank draws its own
    windows, any number of loader workers yield the same sequence, and a resumed run picks up at the
    batch where it stopped (start_batch) instead of replaying the first ones.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, rank: int = 0,
                 start_batch: int = 0) -> None:
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.rank, self.start_batch = seed, rank, start_batch
        self.max_start = len(tokens) - block_size - 1  # last valid start index

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, i])
        starts = rng.integers(0, self.max_start + 1, size=self.batch_size)
        return gather(self.tokens, starts, self.block_size)


class FixedWindows(Dataset):
    """Non-overlapping validation windows in one fixed shuffled order.

    The same windows in the same order for every run, so val losses compare; the fixed shuffle means
    `limit_val_batches` takes a sample from across the whole split rather than only its beginning.
    """

    def __init__(self, tokens: np.ndarray, block_size: int) -> None:
        self.tokens, self.block_size = tokens, block_size
        n = (len(tokens) - 1) // block_size
        self.starts = np.random.default_rng(0).permutation(n) * block_size

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = gather(self.tokens, self.starts[j : j + 1], self.block_size)
        return x[0], y[0]
