"""What a validation measures, in plain torch (no Lightning): val/loss, val/ppl, val/bpc and val/bpb.

GPTLitModule's validation step (in training: its sums kept by torchmetrics, synced across DDP ranks) and `gptlab
eval` (its sums kept by `ValTotals`, in one process) take every figure from here, so the two cannot mean different
things by val/loss. val/loss is the mean loss over every scored token of the epoch: each batch's mean (the model's
own cross-entropy) weighted by the tokens it scored, so a last, partial batch counts for what it holds, and a chat
batch for its answer tokens only (its other targets are -1). val/bpb is the same nats over the UTF-8 bytes of text
the scored tokens stand for (`Tokenizer.text_bytes()`: special tokens stand for none and count in neither sum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from gptlab.tokenizers import Tokenizer

LN2 = math.log(2)


@dataclass
class BatchFigures:
    """What one validation batch adds to the epoch's sums."""

    loss: torch.Tensor  # the batch's mean loss over its scored tokens (what the model returns with the targets)
    tokens: torch.Tensor  # how many tokens it scored: every target >= 0
    text_nats: Optional[torch.Tensor] = None  # the summed loss of the scored tokens that stand for text
    text_bytes: Optional[torch.Tensor] = None  # the bytes of text those tokens stand for


def byte_table(tokenizer: Tokenizer, device: torch.device, table: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bytes of text per token id, on `device`: `table` itself while it still fits (same device, same vocabulary:
    a tokenizer grown by chat markers needs a new one)."""
    if table is None or table.device != device or len(table) != tokenizer.vocab_size:
        table = torch.tensor(tokenizer.text_bytes(), device=device)
    return table


def batch_figures(logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor,
                  table: Optional[torch.Tensor] = None) -> BatchFigures:
    """A batch's share: its loss and scored tokens, and with a byte table (`byte_table`) each scored token's loss
    against the bytes it stands for."""
    scored = y >= 0
    if table is None:
        return BatchFigures(loss, scored.sum())
    nats = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction="none")
    size = table[y.flatten().clamp(min=0)] * scored.flatten()  # special tokens: no bytes
    return BatchFigures(loss, scored.sum(), (nats * (size > 0)).sum(), size.sum())


def epoch_figures(loss: torch.Tensor, text_nats: torch.Tensor, text_bytes: torch.Tensor,
                  tokens_per_char: float) -> dict[str, torch.Tensor]:
    """The logged figures from the epoch's sums: loss in nats per token, its perplexity, bits per character (through
    the split's tokens per character) and, where the tokens stood for any text, bits per byte."""
    figures = {"val/loss": loss, "val/ppl": torch.exp(loss), "val/bpc": loss / LN2 * tokens_per_char}
    if text_bytes > 0:
        figures["val/bpb"] = text_nats / LN2 / text_bytes
    return figures


class ValTotals:
    """The epoch's sums in one process, kept as the module's torchmetrics keep them (MeanMetric's weighted sum and
    weight, SumMetric's sums; float32, or bf16 or fp16 under Lightning's bf16-true and 16-true, which convert the
    metrics with the module), so the figures are the ones a validation logs, to the last bit."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.loss, self.tokens, self.text_nats, self.text_bytes = (
            torch.zeros((), dtype=dtype, device=device) for _ in range(4))

    def update(self, batch: BatchFigures) -> None:
        self.loss += batch.loss.float() * batch.tokens.float()
        self.tokens += batch.tokens.float()
        if batch.text_nats is not None and batch.text_bytes is not None:
            self.text_nats += batch.text_nats.float()
            self.text_bytes += batch.text_bytes.float()

    def figures(self, tokens_per_char: float) -> dict[str, float]:
        loss = self.loss / self.tokens
        return {k: float(v) for k, v in epoch_figures(loss, self.text_nats, self.text_bytes, tokens_per_char).items()}
