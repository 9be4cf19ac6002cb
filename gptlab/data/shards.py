"""Several token files read as one array, memory-mapped: nothing is loaded until a window asks for it.

The shards of a split are one token stream cut in pieces (documents end with the end-of-text token,
across shards too), so a window may run from one shard into the next, as in a single file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np


class TokenShards:
    """The concatenation of token files: len, slices, single ids and integer arrays of indices (any shape),
    as a numpy array would give them. Pickles as its file names, so loader workers map the files themselves."""

    def __init__(self, paths: Sequence[Union[str, Path]], dtype: Union[str, np.dtype]) -> None:
        self.paths = [Path(p) for p in paths]
        self.dtype = np.dtype(dtype)
        self._open()

    def _open(self) -> None:
        self.arrays = [np.memmap(p, dtype=self.dtype, mode="r") for p in self.paths]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])  # where each shard starts

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key) -> Union[np.ndarray, np.integer]:
        if len(self.arrays) == 1:
            return self.arrays[0][key]  # one shard: exactly the plain memmap
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self._read(start, max(stop - start, 0))[::step]
        if isinstance(key, (int, np.integer)):
            i = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} is out of bounds for {len(self)} tokens")
            k = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self.arrays[k][i - self.offsets[k]]
        return self._gather(np.asarray(key))

    def _read(self, start: int, length: int) -> np.ndarray:
        """tokens[start : start + length], reading only the shards it touches."""
        out, k = [], int(np.searchsorted(self.offsets, start, side="right")) - 1
        while length > 0 and k < len(self.arrays):
            local = start - int(self.offsets[k])
            piece = self.arrays[k][local : local + length]
            out.append(piece)
            start, length, k = start + len(piece), length - len(piece), k + 1
        return np.concatenate(out) if out else np.zeros(0, self.dtype)

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of bounds for {len(self)} tokens")
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty(idx.shape, dtype=self.dtype)
        for k in np.unique(shard):
            at = shard == k
            out[at] = self.arrays[k][idx[at] - self.offsets[k]]
        return out

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "dtype": self.dtype.str}

    def __setstate__(self, state: dict) -> None:
        self.paths, self.dtype = state["paths"], np.dtype(state["dtype"])
        self._open()

