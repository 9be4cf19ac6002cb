"""The one place gptlab reads Lightning's private internals, for what Lightning has no public API for.

Lightning is pinned to the versions this was tested with (pyproject.toml); tests/test_top_floor.py fails
loudly when an upgrade moves what is read here.
"""

from __future__ import annotations

from typing import Any, NoReturn

import lightning as L


def cluster_environment(trainer: L.Trainer) -> Any:
    """The cluster environment Lightning runs under (SLURM's, torchrun's, or a plain one): public on the
    strategies of several processes, private (the accelerator connector's) on a single device."""
    env = getattr(getattr(trainer, "strategy", None), "cluster_environment", None)
    return env if env is not None else trainer._accelerator_connector.cluster_environment


def end_validation_here() -> NoReturn:
    """End the validation under way after the batch just done, its epoch's metrics over the batches done (a final
    validation the time budget cannot afford). Lightning has no public way: its evaluation loop ends, as after its
    last batch, on a StopIteration from a step's hooks (what a step reading the dataloader iterator raises).
    tests/test_budgets.py's progress-lines test fails when an upgrade changes that."""
    raise StopIteration
