"""The one exception type users see: a single line saying what is wrong and how to fix it."""


class DifforaError(Exception):
    """A user-facing error; the CLI prints its message as one line and exits with status 2."""
