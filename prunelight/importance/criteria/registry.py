"""The criteria by name: a class registers itself with :func:`register` and is then a choice everywhere.

The built-in criteria are registered by importing their modules in :mod:`prunelight.importance.criteria`;
adding one is a new module with a registered class and one import line there.
"""

from __future__ import annotations

from typing import TypeVar

from prunelight.errors import ConfigError
from prunelight.importance.criteria.base import Criterion

CRITERIA: dict[str, Criterion] = {}
"""Every registered criterion (one instance each: criteria hold no state), in registration order, the order
the choices are listed in."""

C = TypeVar("C", bound=type[Criterion])


def register(cls: C) -> C:
    """Class decorator: make ``cls`` the criterion called ``cls.name``."""
    if cls.name in CRITERIA:
        raise ValueError(f"criterion {cls.name!r} is registered twice")
    CRITERIA[cls.name] = cls()
    return cls


def criterion_info(name: str) -> Criterion:
    """The criterion called ``name``; a :class:`ConfigError` listing the choices for any other name."""
    try:
        return CRITERIA[name]
    except KeyError:
        raise ConfigError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}") from None


def sparse_criteria() -> tuple[str, ...]:
    """The criteria mask pruning can use, in registration order."""
    return tuple(name for name, criterion in CRITERIA.items() if criterion.sparse)
