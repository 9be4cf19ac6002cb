"""User-facing errors: a problem the user can fix, reported as one line with no traceback."""


class GptlabError(Exception):
    """Raised for bad input (missing data, bad config, bad checkpoint). Its message says what and how to fix."""
