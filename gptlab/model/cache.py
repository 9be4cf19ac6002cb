"""The KV cache: every layer's keys and values for a batch of rows, and where each row stands.

A row holds one sequence. Its tokens fill slots 0, 1, 2, ... in order; a row whose prompt was left-padded to
the batch's length starts its text at slot `start` and never looks at the padding before it. The cache keeps
each row's length itself, so a forward pass only says which rows it feeds (`rows`, None: all of them in order)
and the cache says where their tokens go, at which positions, and which slots each query may see.

Eager decoding reads only the slots written so far (`seen`, which the engine sets); with `seen` None attention
reads every slot, the unwritten ones masked out, so shapes never change from step to step and a compiled one-token
step, or a CUDA graph of it, serves every step.
"""

from __future__ import annotations

from typing import Optional

import torch


class KVCache:
    """Keys and values 2 x (n_layer, batch, n_kv_head, max_len, head_size), each row's length and start."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_size: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        # zeros, not empty: a masked slot weighs 0, but 0 * NaN (uninitialised memory) would still be NaN
        self.k = torch.zeros(n_layer, batch, n_kv_head, max_len, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = torch.zeros(batch, dtype=torch.long, device=device)  # slots written in each row
        self.start = torch.zeros(batch, dtype=torch.long, device=device)  # each row's first slot of text
        self.slots = torch.arange(max_len, device=device)
        self.rows: Optional[torch.Tensor] = None  # the cache rows the next forward's rows are; None: all, in order
        self.seen: Optional[int] = None  # the slots the next forward reads, the new ones included; None: all
        self.even = True  # every row holds as many slots as the others: one index_copy writes them all
        self.at = self.mask = torch.empty(0)  # set by advance() for the layers of one forward
        if self.k.is_cuda:  # a fixed address: a CUDA graph updates the cache in place instead of copying it
            for t in (self.k, self.v, self.length, self.start):
                torch._dynamo.mark_static_address(t)

    @property
    def batch(self) -> int:
        return self.k.size(1)

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    def reset(self, rows: Optional[torch.Tensor] = None, start: Optional[torch.Tensor] = None) -> None:
        """Empty `rows` (None: all); start (len(rows),): the padding slots before each one's text."""
        if rows is None:
            self.length.zero_()
            self.start.copy_(start if start is not None else torch.zeros_like(self.start))
        else:
            self.length[rows] = 0
            self.start[rows] = start if start is not None else 0
        self.even = rows is None or self.batch == 1

    def advance(self, T: int) -> torch.Tensor:
        """Take the next T slots of each of `rows` for the forward about to run; returns the positions of its
        tokens (B, T). Sets `at` (B, T), their slots, and `mask` (B, 1, T, max_len), what each of them sees:
        the slots of its own text up to itself (a padding token sees itself only: no empty softmax)."""
        length = self.length if self.rows is None else self.length[self.rows]  # (B,)
        start = self.start if self.rows is None else self.start[self.rows]
        self.at = length.unsqueeze(1) + self.slots[:T]  # (B, T)
        at, slots = self.at.unsqueeze(-1), self.slots[:self.seen]
        self.mask = ((slots <= at) & ((slots >= start.view(-1, 1, 1)) | (slots == at))).unsqueeze(1)
        if self.rows is None:
            self.length += T
        else:
            self.length[self.rows] = length + T
            self.even = self.even and self.batch == 1
        return (self.at - start.unsqueeze(1)).clamp(min=0)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a layer's new keys and values (B, n_kv_head, T, hs) at `at`; return the slots the forward reads
        of their rows, 2 x (B, n_kv_head, seen, hs)."""
        keys, values = self.k[layer], self.v[layer]
        if self.rows is None and self.even:  # every row at the same slots (left padding included)
            keys.index_copy_(2, self.at[0], k)
            values.index_copy_(2, self.at[0], v)
        else:
            rows = (torch.arange(k.size(0), device=k.device) if self.rows is None else self.rows).unsqueeze(1)
            keys[rows, :, self.at] = k.transpose(1, 2)  # indexed (B, T, h, hs): each row at its own slots
            values[rows, :, self.at] = v.transpose(1, 2)
        keys, values = keys[:, :, :self.seen], values[:, :, :self.seen]
        return (keys, values) if self.rows is None else (keys[self.rows], values[self.rows])
