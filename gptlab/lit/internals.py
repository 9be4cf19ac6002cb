"""The one place gptlab reads Lightning's private internals, for what Lightning has no public API for.

Lightning is pinned to the versions this was tested with (pyproject.toml); tests/test_top_floor.py fails
loudly when an upgrade moves what is read here.
"""

from __future__ import annotations

from typing import Any

import lightning as L


def cluster_environment(trainer: L.Trainer) -> Any:
    """The cluster environment Lightning runs under (SLURM's, torchrun's, or a plain one): public on the
    strategies of several processes, private (the accelerator connector's) on a single device."""
    env = getattr(getattr(trainer, "strategy", None), "cluster_environment", None)
    return env if env is not None else trainer._accelerator_connector.cluster_environment
