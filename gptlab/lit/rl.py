"""Reinforcement learning on verifiable answers (`objective=grpo`): GRPO without a critic, on the answers the data
can check.

A step: P prompts of the train split (data.batch_size, drawn as a pure function of seed, rank and step) are each
answered `samples` times through the decoding engine (model/engine.py), at the objective's temperature, each
prompt's answers from a generator of its own seeded by (seed, step, rank, prompt), so a step samples the same answers
whatever else runs with it. The reward function scores every answer (data/rewards.py). An answer's advantage is its
reward minus the mean reward of its group (the other answers to the same prompt): the baseline GRPO uses, without
dividing by the group's spread (Dr. GRPO: that division weights questions by how unsure the model is of them). The
loss is the policy gradient on the answer tokens only (the prompt and padding are never scored):

    loss = -sum over answer tokens (advantage of the token's answer x log p(token)) / number of those tokens

a mean per token over the step, not per answer first (DAPO: a long answer's tokens weigh as much as a short one's).
The answers are sampled by the weights being trained, once per update, so the PPO ratio is 1 and clipping has
nothing to do. A group whose answers all got the same reward has advantages of zero and teaches nothing, so it is
not run through the model at all (DAPO's dynamic sampling, without drawing more prompts to replace it): as the
model gets better, steps get cheaper. No KL penalty by default (`kl_coef=0`, as DAPO and Dr. GRPO); the KL to the
start model is measured on every step's trained answers either way (the k3 estimator, as GRPO) and logged.
Dropout is off throughout: the answers are sampled without it, and the update must score them by the same policy.
"""

from __future__ import annotations

import copy
from typing import Any, NoReturn, Optional, Sequence

import numpy as np
import torch

from gptlab.checkpoint import REFERENCE
from gptlab.data.chat import Question
from gptlab.data.rewards import Reward, RewardError, score
from gptlab.lit.grpo import GRPOConfig, advantages, policy_loss, seeded
from gptlab.lit.module import GPTLitModule
from gptlab.lit.safety import save_last
from gptlab.model import GPT
from gptlab.model.engine import Engine, Request
from gptlab.model.lora import adapters_off
from gptlab.tokenizers.chat import end_id

VALIDATION = 1 << 40  # in place of the step in a validation sample's seed: no training step has it


class GRPOModule(GPTLitModule):
    """The GPT trained by GRPO on verifiable answers; validation adds held-out exact match and pass@k to the loss on
    the answers. Everything else (optimizer, schedule, checkpoints, resume, time budget) is GPTLitModule's."""

    def __init__(self, objective: GRPOConfig, reward: Reward, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.objective, self.reward, self.seed = objective, reward, seed
        self._reference: list[GPT] = []  # the start model, frozen (in a list: not a submodule, not in state_dict)
        self._reference_state: Optional[dict] = None  # a resumed run's, from its checkpoint
        self._judged: list[Question] = []  # the held-out answers each validation judges
        self._rollout_tokens = 0  # tokens the last step's rollouts held

    def prepare_data(self) -> None:
        """The reward, tried once on the data's first answer, right after the data is read (its prepare_data) and
        before anything is written."""
        dm = self.trainer.datamodule  # type: ignore[attr-defined]
        if dm.train_questions:
            q = dm.train_questions[0]
            score(self.reward, q.messages, q.reference, q.reference)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule  # type: ignore[attr-defined]
        n = len(dm.val_questions)  # held-out answers judged at each validation: evenly over the val split
        self._judged = [dm.val_questions[i] for i in
                        np.linspace(0, n - 1, min(n, self.objective.val_questions)).round().astype(int)] if n else []

    # -- the start model ------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        assert self.model is not None
        if self.base_is_start():
            self._reference_state = None  # (a checkpoint from before this rule held a copy: the base is the same)
            return
        reference = copy.deepcopy(self.model)  # a fresh run starts from these weights; a resumed one from its record
        if self._reference_state is not None:
            reference.load_state_dict(self._reference_state)
            self._reference_state = None
        self._reference[:] = [reference.requires_grad_(False).eval()]

    def base_is_start(self) -> bool:
        """A LoRA run whose trained weights are all adapters (no new token rows): the start model is the base with
        its adapters off, so no copy is kept in memory or in checkpoints."""
        return self.lora is not None and self.new_tokens_from is None

    def reference_logits(self, idx: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
        """The start model's logits for the scored positions (no gradient)."""
        with torch.no_grad():
            if not self._reference:
                with adapters_off(self.model):  # type: ignore[arg-type]
                    return self.model.head(self.model.features(idx)[scored])  # type: ignore[union-attr]
            reference = self._reference[0]
            return reference.head(reference.features(idx)[scored])

    def on_train_start(self) -> None:
        if self.trainer.global_step == 0 and self.objective.val_questions and self.logger is not None:
            # the start's figures, so that curves begin where the run did
            self.logger.log_metrics({f"val/{k}": v for k, v in self.judge().items()}, step=0)

    def on_save_checkpoint(self, ckpt: dict) -> None:
        super().on_save_checkpoint(ckpt)
        if self._reference:
            ckpt[REFERENCE] = {k: v.detach().cpu() for k, v in self._reference[0].state_dict().items()}

    def on_load_checkpoint(self, ckpt: dict) -> None:
        super().on_load_checkpoint(ckpt)
        self._reference_state = ckpt.get(REFERENCE)

    # -- a step -------------------------------------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        assert self.model is not None and self.tokenizer is not None
        questions: list[Question] = [self.trainer.datamodule.train_questions[i] for i in batch.tolist()]  # type: ignore
        k, step, rank = self.objective.samples, self.trainer.global_step, self.trainer.global_rank
        groups = [self.answers(q, k, seeded(self.seed, step, rank, b, device=self.device))
                  for b, q in enumerate(questions)]
        Engine(self.model, len(questions) * k, self.tokenizer).run([r for g in groups for r in g])
        self._rollout_tokens = sum(len(r.prompt) + len(r.tokens) for g in groups for r in g)
        try:
            rewards = torch.tensor([[score(self.reward, q.messages, r.text.text, q.reference)  # type: ignore
                                     for r in g] for q, g in zip(questions, groups)])
        except RewardError as e:  # before the update: the checkpoint holds the steps done, and a resume redoes this
            self.stop(e)
        adv = advantages(rewards)
        taught = [(q, r, float(a)) for q, g, row in zip(questions, groups, adv)
                  if row.abs().max() > 0 for r, a in zip(g, row)]
        if not taught:  # nothing to learn from this step: one answer with weight 0 keeps every rank's graph whole
            taught = [(questions[0], groups[0][0], 0.0)]
        loss, stats = self.update([(q.prompt, r.tokens, a) for q, r, a in taught])
        exact = [[r.text.text == q.reference for r in g] for q, g in zip(questions, groups)]  # type: ignore
        self.log("rl/loss", loss, prog_bar=True)  # not train/loss: a policy gradient's, not a likelihood
        self.log("rl/reward", rewards.mean(), prog_bar=True)
        self.log_dict({"rl/any_exact": float(np.mean([any(e) for e in exact])),
                       "rl/trained_groups": float((adv.abs().amax(dim=1) > 0).float().mean()),
                       "rl/answer_tokens": float(np.mean([len(r.tokens) for g in groups for r in g])),
                       "rl/entropy": stats["entropy"], "rl/kl": stats["kl"]})
        return loss

    def batch_tokens(self, batch: Any) -> tuple[int, int]:
        """The tokens of the step's rollouts (prompts and answers): what the step decoded."""
        assert self.model is not None
        return self._rollout_tokens, self.model.config.block_size

    def stop(self, error: RewardError) -> NoReturn:
        """Stop the run on a reward's error, its last checkpoint saved (where there is work to keep)."""
        step = self.trainer.global_step
        saved = save_last(self.trainer) if self.trainer.world_size == 1 and step > 0 else None
        where = f"; the run's last checkpoint is {saved}: fix the reward and resume with ckpt_path=" \
            f"{self.trainer.default_root_dir}" if saved else ""
        raise RewardError(f"{error} at step {step}{where}") from None

    def answers(self, q: Question, n: int, generator: Optional[torch.Generator], judged: bool = False,
                greedy: bool = False) -> list[Request]:
        """n requests for answers to q: sampled (or greedy), up to max_new_tokens within the context (an answer never
        slides the window, so the update scores exactly what was sampled); judged: up to the data's answer's length,
        as `gptlab eval` judges."""
        assert self.model is not None and self.tokenizer is not None
        o = self.objective
        budget = min(q.budget if judged else o.max_new_tokens, self.model.config.block_size + 1 - len(q.prompt))
        return [Request(q.prompt, budget, 0.0 if greedy else o.temperature, None if greedy else o.top_k,
                        stop_token=end_id(self.tokenizer), generator=generator) for _ in range(n)]

    def update(self, answers: Sequence[tuple[list[int], list[int], float]]) -> tuple[torch.Tensor, dict]:
        """The loss of (prompt, answer tokens, advantage) triples: one forward of the padded rows, the head only where
        an answer token is predicted."""
        assert self.model is not None
        rows = [p + t for p, t, _ in answers]
        width = max(map(len, rows)) - 1
        idx = torch.zeros(len(rows), width, dtype=torch.long)
        targets = torch.full((len(rows), width), -1, dtype=torch.long)
        weights = torch.zeros(len(rows), width)
        for b, ((prompt, tokens, a), row) in enumerate(zip(answers, rows)):
            idx[b, :len(row) - 1] = torch.tensor(row[:-1])
            targets[b, len(prompt) - 1:len(row) - 1] = torch.tensor(tokens)
            weights[b] = a
        idx, targets, weights = idx.to(self.device), targets.to(self.device), weights.to(self.device)
        scored = targets >= 0
        self.model.eval()  # no dropout: the answers are scored by the policy that sampled them
        try:
            logits = self.model.head(self.model.features(idx)[scored])
            reference_logits = self.reference_logits(idx, scored)
        finally:
            self.model.train()
        return policy_loss(logits, targets[scored], weights[scored], reference_logits, self.objective.kl_coef)

    # -- validation -----------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.objective.val_questions and not self.trainer.sanity_checking:
            # (summed over the ranks in judge: sync_dist only tells Lightning so)
            self.log_dict({f"val/{k}": v for k, v in self.judge().items()}, prog_bar=True, sync_dist=True)

    def judge(self) -> dict[str, float]:
        try:
            return self._judge()
        except RewardError as e:
            self.stop(e)

    @torch.no_grad()
    def _judge(self) -> dict[str, float]:
        """Held-out answers (objective.val_questions of the val split, this rank's share), each held to the length of
        the data's answer as `gptlab eval` judges: greedy exact match (pass@1 at temperature 0), the mean reward of
        those answers, and pass@k (any of `samples` sampled answers exact). The same samples at every validation
        (seeded by the question), so the figures compare."""
        assert self.model is not None and self.tokenizer is not None
        world, rank = self.trainer.world_size, self.trainer.global_rank
        questions = self._judged[rank::world]
        k = self.objective.samples
        greedy = [self.answers(q, 1, None, judged=True, greedy=True)[0] for q in questions]
        sampled = [self.answers(q, k, seeded(self.seed, VALIDATION, i * world + rank, device=self.device), judged=True)
                   for i, q in enumerate(questions)]
        requests = greedy + [r for g in sampled for r in g]
        if requests:
            Engine(self.model, min(256, len(requests)), self.tokenizer).run(requests)
        sums = torch.tensor([
            sum(r.text.text == q.reference for q, r in zip(questions, greedy)),  # type: ignore[union-attr]
            sum(score(self.reward, q.messages, r.text.text, q.reference) for q, r in zip(questions, greedy)),  # type: ignore
            sum(any(r.text.text == q.reference for r in g) for q, g in zip(questions, sampled)),  # type: ignore
            len(questions)], dtype=torch.float64, device=self.device)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum") if world > 1 else sums
        n = max(1.0, float(sums[3]))
        return {"exact_match": float(sums[0]) / n, "reward": float(sums[1]) / n, f"pass@{k}": float(sums[2]) / n}

