"""Running a Hydra entry point so that user mistakes end in one clear line, not a traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from gptlab.errors import GptlabError
from gptlab.model import ConfigError
from gptlab.tokenizers import TokenizerError

USER_ERRORS = (GptlabError, ConfigError, TokenizerError, HydraException, OmegaConfBaseException)


def one_line(ex: BaseException) -> str:
    """Hydra and OmegaConf spread a message over several lines (key, full_key, object_type); keep the gist."""
    parts = [str(ex)]
    cause = ex.__cause__
    if isinstance(ex, HydraException) and isinstance(cause, OmegaConfBaseException):
        parts.append(str(cause).splitlines()[0] if str(cause) else "")
    if isinstance(ex, OmegaConfBaseException):
        parts = [str(ex).splitlines()[0]]
    text = " ".join(" ".join(parts).split())
    text = text.replace("Key '", "key '").replace(" is not in struct", " does not exist (check its spelling)")
    if isinstance(ex, (HydraException, OmegaConfBaseException)):
        text += " | see every key: python -m gptlab.train --cfg job"
    return text


def run(hydra_main: Callable[[], object]) -> None:
    """Call a @hydra.main function; a user error prints `error: ...` on stderr and exits with status 2.

    Hydra catches exceptions itself and prints them over several lines unless HYDRA_FULL_ERROR is set;
    we set it so they reach us. If you set HYDRA_FULL_ERROR yourself, you get the full traceback.
    """
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except USER_ERRORS as ex:
        if wants_traceback:
            raise
        print(f"error: {one_line(ex)}", file=sys.stderr)
        sys.exit(2)
