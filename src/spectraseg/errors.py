"""Errors and warnings meant for users.

A :class:`SpectrasegError` carries one sentence naming the file or value at fault; the CLI
prints it without a traceback and exits non-zero. Anything else escaping the library is a bug.
"""


class SpectrasegError(Exception):
    """A user-facing error (bad input file, bad value, bad configuration)."""


class DataError(SpectrasegError):
    """A dataset file is missing, unreadable, truncated or malformed."""


class ConfigError(SpectrasegError):
    """A configuration key or value is unknown or invalid."""


class SpectrasegWarning(UserWarning):
    """Something was repaired or fell back; the result is still usable."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-sentence error quotes of a library's multi-line message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
