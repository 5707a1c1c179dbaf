"""The one exception type for bad user input: printed as one line, exit code 2."""


class NegrlError(Exception):
    """A user-facing error: the message names the bad value and how to fix it."""

    exit_code = 2


class RunFailed(Exception):
    """A run that started and could not finish (e.g. a non-finite loss); recorded in results.json."""

    exit_code = 1
