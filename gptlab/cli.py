"""Running a Hydra entry point so that user mistakes end in one clear line, not a traceback."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, NoReturn, TypeVar

from hydra.errors import HydraException, InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from gptlab.errors import GptlabError
from gptlab.model import ConfigError
from gptlab.tokenizers import TokenizerError

T = TypeVar("T")
COMMAND = "python -m gptlab.train"  # the entry point being run, for hints; set by run()
USER_ERRORS = (GptlabError, ConfigError, TokenizerError, HydraException, OmegaConfBaseException)


def one_line(ex: BaseException) -> str:
    """Hydra and OmegaConf spread a message over several lines (key, full_key, object_type); keep the gist."""
    if isinstance(ex, InstantiationException) and ex.__cause__ is not None:
        # building an object from the config failed: the cause is the message that matters
        cause = ex.__cause__
        if isinstance(cause, (GptlabError, ConfigError, TokenizerError)):
            return one_line(cause)
        node = str(ex).split("full_key:")[-1].strip() if "full_key:" in str(ex) else "config"
        text = f"{node}: {' '.join(str(cause).split())}"
        if "No supported gpu backend" in text:
            text += " This machine has no GPU: use trainer=cpu (or trainer.accelerator=cpu)."
        return text
    cause = ex.__cause__
    if str(ex).startswith("Could not override") and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        key = str(ex).split("'")[1]
        return f"unknown config key {key}: check its spelling | every key: {COMMAND} --cfg job"
    parts = [str(ex)]
    if isinstance(ex, HydraException) and isinstance(cause, OmegaConfBaseException):
        parts.append(str(cause).splitlines()[0] if str(cause) else "")
    if isinstance(ex, OmegaConfBaseException):
        parts = [str(ex).splitlines()[0]]
    text = " ".join(" ".join(parts).split()).split(" Config search path")[0]
    if isinstance(ex, (HydraException, OmegaConfBaseException)):
        text += f" | every key: {COMMAND} --cfg job"
    return text


def run(hydra_main: Callable[[], object]) -> None:
    """Call a @hydra.main function; a user error prints `error: ...` on stderr and exits with status 2.

    Hydra catches exceptions itself and prints them over several lines unless HYDRA_FULL_ERROR is set;
    we set it so they reach us. If you set HYDRA_FULL_ERROR yourself, you get the full traceback.
    Processes a gptlab command starts (DDP ranks) inherit its choice through GPTLAB_TRACEBACK.
    """
    global COMMAND
    COMMAND = f"python -m {hydra_main.__module__}"
    inherited = os.environ.get("GPTLAB_TRACEBACK")
    wants_traceback = inherited == "1" if inherited is not None else os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["GPTLAB_TRACEBACK"] = "1" if wants_traceback else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except USER_ERRORS as ex:  # composing the config failed, before any job ran
        if wants_traceback:
            raise
        fail(ex)


def fail(ex: BaseException) -> NoReturn:
    print(f"error: {one_line(ex)}", file=sys.stderr)
    sys.exit(2)


def reports_errors(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Wrap a Hydra task function: a user error inside the job ends it with one line and exit status 2.

    (Caught here rather than after Hydra returns, because Hydra writes its own "Error executing job"
    line for exceptions that leave the task function; SystemExit passes it silently.)
    """

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> T:
        try:
            return task(cfg)
        except USER_ERRORS as ex:
            if os.environ.get("GPTLAB_TRACEBACK") == "1":
                raise
            fail(ex)

    return wrapper
