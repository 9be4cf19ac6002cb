"""A trained GPT for a new run's shape (init_from=, a chat fine-tune's new tokens): more token rows, fewer
positions. The weights it has keep their meaning; new token rows start as the average token."""

from __future__ import annotations

from dataclasses import replace

import torch

from gptlab.model.gpt import GPT, ConfigError, GPTConfig


@torch.no_grad()
def add_tokens(model: GPT, old: int, new: int) -> GPT:
    """The model for a tokenizer that grew from `old` to `new` tokens (special tokens, new characters): the
    table grows where it must, and the new ids' rows start as the mean of the trained ones, so a new token
    begins as an average token (a random row would give it a large, arbitrary logit). Returns `model`
    itself when its (padded) table already has the rows."""
    if new <= old:
        return model
    if new > model.config.vocab_size:
        grown = GPT(replace(model.config, vocab_size=new))
        state = model.state_dict()
        for key in ("transformer.wte.weight", "lm_head.weight"):
            if key in state:
                table = grown.state_dict()[key].clone()
                table[: state[key].size(0)] = state[key]
                state[key] = table
        grown.load_state_dict(state)
        model = grown.train(model.training)
    for table in {id(t): t for t in (model.transformer.wte.weight, model.lm_head.weight)}.values():
        table[old:new] = table[:old].mean(dim=0)
    return model


def adapt(model: GPT, spec: GPTConfig) -> GPT:
    """A GPT of `spec` holding `model`'s weights: the position table cut to a smaller block_size, rows added
    (as add_tokens adds them) for a larger vocab_size; the fields of CHANGEABLE_ON_RESUME need no weights."""
    old = model.config
    if spec.block_size > old.block_size:
        raise ConfigError(f"model.block_size={spec.block_size} is larger than the source's {old.block_size}: "
                          "positions past it were never trained; use at most that")
    if (spec.vocab_size or 0) < (old.vocab_size or 0):
        raise ConfigError(f"model.vocab_size={spec.vocab_size} is smaller than the source's {old.vocab_size}")
    model = add_tokens(model, old.vocab_size or 0, spec.vocab_size or 0)
    state = model.state_dict()
    if "transformer.wpe.weight" in state:
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][: spec.block_size]
    new = GPT(spec)
    new.load_state_dict(state)
    return new

