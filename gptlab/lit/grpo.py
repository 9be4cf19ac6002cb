"""GRPO's settings and its arithmetic, in plain torch: the group baseline, the policy-gradient loss with the KL to
the start model, and the seeded generators that make a step reproducible. The LightningModule that runs it is
gptlab/lit/rl.py; the settings live here so that reading a config needs no Lightning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

@dataclass
class GRPOConfig:
    """RL on checkable answers: GRPO without a critic (gptlab/lit/rl.py); data.batch_size questions a step, each
    answered `samples` times. (No objective: next-token prediction, as pretraining and SFT.)"""

    kind: str = "grpo"
    samples: int = 8  # answers to each prompt: the group whose mean reward is each answer's baseline
    temperature: float = 1.0  # of the sampled answers (> 0: a group of greedy answers is one answer k times)
    top_k: Optional[int] = None
    max_new_tokens: int = 64  # the longest answer; an answer that reaches it without <|end|> is scored as it is
    reward: str = "gptlab.data.rewards:exact_match"  # module:function(messages, answer, reference) -> float
    kl_coef: float = 0.0  # weight of the KL to the start model in the loss; 0: measured and logged only
    val_questions: int = 500  # held-out answers judged at each validation (greedy and pass@k); 0: none

    def __post_init__(self) -> None:
        if self.kind != "grpo":
            raise ValueError(f"objective.kind={self.kind} is not grpo")
        if self.samples < 2:
            raise ValueError(f"objective.samples must be >= 2, got {self.samples}: each answer is judged against "
                             "the others to the same prompt, and one answer alone has nothing to be judged against")
        if not self.temperature > 0:
            raise ValueError(f"objective.temperature must be > 0, got {self.temperature}: greedy answers to one "
                             "prompt are all the same, so their rewards never differ")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"objective.top_k must be >= 1 (or null), got {self.top_k}")
        for key in ("max_new_tokens",):
            if getattr(self, key) < 1:
                raise ValueError(f"objective.{key} must be >= 1, got {getattr(self, key)}")
        if self.kl_coef < 0 or self.val_questions < 0:
            raise ValueError("objective.kl_coef and objective.val_questions must be >= 0")


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, k) rewards of k answers to each of P prompts -> each answer's reward minus its group's mean."""
    return rewards - rewards.mean(dim=1, keepdim=True)


def policy_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                reference_logits: Optional[torch.Tensor] = None, kl_coef: float = 0.0
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The policy gradient loss over M answer tokens: logits (M, V) predicting targets (M,), each token weighted by
    its answer's advantage (weights (M,)), a mean per token. With the start model's logits for the same tokens:
    the KL to it (k3: exp(d) - d - 1 with d = log p_ref - log p, unbiased and >= 0), added with kl_coef.
    Returns the loss and {entropy, kl} (means per token, no gradient)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, targets[:, None]).squeeze(1)  # (M,)
    loss = -(weights * chosen).mean()
    stats = {"entropy": -(logp.exp() * logp).sum(-1).mean().detach()}
    if reference_logits is not None:
        d = F.log_softmax(reference_logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1) - chosen
        kl = (torch.exp(d) - d - 1).mean()
        stats["kl"] = kl.detach()
        if kl_coef:
            loss = loss + kl_coef * kl
    return loss, stats


def seeded(*key: int, device: Any = "cpu") -> torch.Generator:
    """A generator seeded from a tuple of ints (run seed, step, rank, prompt): independent streams for each."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)
