"""nn.Linear, faster where decoding runs on a CPU: the products of a few rows use every core."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Linear(nn.Linear):
    """nn.Linear whose products with a few rows (decoding: one token per sequence) use every CPU core. A CPU
    multiplies a matrix by a vector on one core, and one core cannot draw the memory bandwidth that reading the
    weights needs; cut by output rows into one batch entry per thread, the same product runs on all of them
    (tokens/s on 2 cores, batch 1: 1.2x at model=small, 1.8x at GPT-2 124M; docs/results.md, Generation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or x.device.type != "cpu" or x.dtype != torch.float32 \
                or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):  # compiled: its own kernels;
            # bf16 products (autocast's too) are parallel already
            return super().forward(x)
        n, rows, (out, C) = torch.get_num_threads(), x.numel() // x.size(-1), self.weight.shape
        if n == 1 or rows > 16 or out < 8 * n:
            return super().forward(x)
        whole = out // n * n  # rows of the weight in n equal parts; the few left over go alone
        parts = self.weight[:whole].view(n, whole // n, C).transpose(1, 2)  # (n, C, whole / n)
        y = torch.bmm(x.reshape(1, rows, C).expand(n, rows, C), parts).transpose(0, 1).reshape(rows, whole)
        if whole < out:
            y = torch.cat([y, F.linear(x.reshape(rows, C), self.weight[whole:])], dim=1)
        y = y if self.bias is None else y + self.bias
        return y.view(*x.shape[:-1], out)
