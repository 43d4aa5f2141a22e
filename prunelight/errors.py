"""Errors a user can act on.

Every check on user input raises a subclass of :class:`PrunelightError` whose message names the problem and
the fix. The command line prints such errors as one line and exits with status 2, with no stack trace; any
other exception is a bug in prunelight and keeps its traceback.
"""

from __future__ import annotations

from collections import deque

_RECENT: deque[str] = deque(maxlen=32)
"""The messages of the last PrunelightErrors made. jsonargparse reports an error raised while it type-checks
a value (a settings dataclass inside a union, a list of them) as text inside its own report, without the
exception; the command line finds the message there (:func:`raised_message_in`)."""


class PrunelightError(Exception):
    """Base class for errors caused by the input (configuration, files, models), not by prunelight."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        _RECENT.append(str(self))


def raised_message_in(text: str) -> str | None:
    """The message of a recent :class:`PrunelightError` that ``text`` quotes (the latest first), if any."""
    return next((message for message in reversed(_RECENT) if message and message in text), None)


class ConfigError(PrunelightError, ValueError):
    """A setting is out of range or inconsistent with another one."""


class ModelError(PrunelightError):
    """A model cannot be found, loaded or is of a family prunelight does not know."""


class UnsupportedModelError(ModelError):
    """The model's architecture has no family adapter."""


class DataError(PrunelightError):
    """A corpus cannot be found, read, or is too small for what was asked."""
