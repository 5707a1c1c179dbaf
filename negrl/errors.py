"""The one exception type for bad user input: printed as one line, exit code 2."""


class NegrlError(Exception):
    """A user-facing error: the message names the bad value and how to fix it."""

    exit_code = 2
