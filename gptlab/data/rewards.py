"""Rewards for reinforcement learning on verifiable answers (objective=grpo): a function of (the conversation before
the answer, the answer's text, the data's answer) -> a number.

    objective.reward=gptlab.data.rewards:exact_match      # the default: 1.0 for the data's answer exactly, else 0.0
    objective.reward=my_rewards:close_enough              # any importable function (the run's folder is on the path)

A user's own verifiable task is a JSONL file of conversations (their assistant messages are the references) and
one such function. A reward is checked before the run starts (imported, called once, a number back) and at every
call: one that raises or returns something other than a finite number stops the run in one line naming it and the
answer it was given.
"""

from __future__ import annotations

import importlib
import math
import numbers
import sys
from pathlib import Path
from typing import Callable, Sequence

from gptlab.errors import GptlabError
from gptlab.tokenizers.chat import Message

Reward = Callable[[Sequence[Message], str, str], float]


class RewardError(GptlabError):
    """A reward that cannot be imported, raised, or returned something that is not a finite number."""


def exact_match(messages: Sequence[Message], answer: str, reference: str) -> float:
    """1.0 for exactly the data's answer, else 0.0: `gptlab eval ... data=chat`'s exact match, as a reward."""
    return float(answer == reference)


def load_reward(spec: str) -> Reward:
    """The function `module:function` names, imported (the current folder first on the path, as `python -m`)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise RewardError(f"objective.reward={spec} is not module:function (e.g. gptlab.data.rewards:exact_match, "
                          "or my_rewards:score for a function score in ./my_rewards.py)")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module's own error while it loads
        raise RewardError(f"objective.reward={spec}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardError(f"objective.reward={spec}: {module_name} has no function {name}")
    return fn


def score(reward: Reward, messages: Sequence[Message], answer: str, reference: str) -> float:
    """reward(...) as a float; a RewardError naming the function and the answer when it raises or gives no number."""
    name = f"{getattr(reward, '__module__', '?')}:{getattr(reward, '__qualname__', reward)}"
    try:
        value = reward(messages, answer, reference)
    except Exception as e:
        raise RewardError(f"the reward {name} raised {type(e).__name__}: {e} (for the answer {answer!r}, "
                          f"reference {reference!r})") from None
    if not isinstance(value, numbers.Real) or not math.isfinite(value):  # True/False count as 1/0
        raise RewardError(f"the reward {name} returned {value!r} for the answer {answer!r} (reference "
                          f"{reference!r}): it must return a finite number")
    return float(value)
