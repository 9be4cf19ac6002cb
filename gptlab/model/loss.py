"""The training loss without its logits: cross-entropy of the language-model head, a chunk of tokens at a time.

The head's logits are the largest activation a GPT makes: (tokens, vocab), 206 MB in float32 for a batch of 4 x 256
at GPT-2's vocabulary, kept with their log-softmax and their gradient for the backward pass. Here each chunk's
logits are made, scored and differentiated at once (the gradient of cross-entropy with respect to the logits is
softmax minus the one-hot target), and only the gradients of the head's input and weight are kept: the same loss
and gradients, the memory of one chunk (bench_lora.py: ~0.6 GB less at GPT-2 124M's shape, batch 4 x 256).
"""

from __future__ import annotations

from typing import Optional

import torch

LOGITS_AT_ONCE = 1 << 22  # float32 logits that exist at a time (16 MiB): 83 tokens at GPT-2's vocabulary


class ChunkedHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of softcap(x W^T) against the targets (-1: not scored), with its gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                softcap: Optional[float]) -> torch.Tensor:
        # x (N, C) features, weight (V, C) the head, targets (N,)
        scored = (targets != -1).sum().clamp(min=1)
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None  # a frozen head (LoRA) needs none
        chunk = max(1, LOGITS_AT_ONCE // weight.size(0))  # a char model's batch is one chunk
        for start in range(0, x.size(0), chunk):
            xc, yc = x[start:start + chunk], targets[start:start + chunk]
            logits = (xc @ weight.t()).float()  # (n, V); under autocast the product runs in its precision
            if softcap:
                squash = torch.tanh(logits / softcap)
                logits = softcap * squash
            logp = logits.log_softmax(-1)
            is_scored = yc != -1
            keep = is_scored.nonzero().squeeze(1)
            loss -= logp[keep, yc[keep]].sum()
            grad = logp.exp_()  # d loss / d logits = softmax - one-hot, on scored rows only
            grad[keep, yc[keep]] -= 1
            grad[~is_scored] = 0
            if softcap:
                grad *= 1 - squash * squash  # d (cap tanh(z / cap)) / dz
            grad = grad.to(weight.dtype)  # the products back run as the one forward did (autocast's precision)
            grad_x[start:start + chunk] = grad @ weight  # (n, C)
            if grad_w is not None:
                grad_w += grad.t() @ xc  # (V, C)
        ctx.save_for_backward(grad_x.div_(scored), None if grad_w is None else grad_w.div_(scored))  # in place: no copies
        return loss / scored

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, None if grad_w is None else grad_w * grad_loss, None, None
