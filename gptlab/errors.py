"""User-facing errors: a problem the user can fix, reported as one line with no traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class GptlabError(Exception):
    """Raised for bad input (missing data, bad config, bad checkpoint). Its message says what and how to fix."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean NAME?)` for the closest of choices to a misspelt word, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
