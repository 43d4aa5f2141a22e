"""Errors a user can act on.

Every check on user input raises a subclass of :class:`PrunelightError` whose message names the problem and
the fix. The command line prints such errors as one line and exits with status 2, with no stack trace; any
other exception is a bug in prunelight and keeps its traceback.
"""


class PrunelightError(Exception):
    """Base class for errors caused by the input (configuration, files, models), not by prunelight."""


class ConfigError(PrunelightError, ValueError):
    """A setting is out of range or inconsistent with another one."""


class ModelError(PrunelightError):
    """A model cannot be found, loaded or is of a family prunelight does not know."""


class UnsupportedModelError(ModelError):
    """The model's architecture has no family adapter."""


class DataError(PrunelightError):
    """A corpus cannot be found, read, or is too small for what was asked."""
