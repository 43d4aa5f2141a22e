"""The sparse patterns by name: a class registers itself with :func:`register`.

The built-in patterns are registered by importing their modules in :mod:`prunelight.apply.patterns`.
"""

from __future__ import annotations

from typing import TypeVar

from prunelight.apply.patterns.base import SparsePattern
from prunelight.errors import ConfigError

PATTERNS: dict[str, SparsePattern] = {}
"""Every registered pattern (one stateless instance each), in the order the choices are listed."""

P = TypeVar("P", bound=type[SparsePattern])


def register(cls: P) -> P:
    """Class decorator: make ``cls`` the pattern called ``cls.name``."""
    if cls.name in PATTERNS:
        raise ValueError(f"sparse pattern {cls.name!r} is registered twice")
    PATTERNS[cls.name] = cls()
    return cls


def pattern_named(name: str) -> SparsePattern:
    """The pattern called ``name``; a :class:`ConfigError` listing the choices for any other name."""
    try:
        return PATTERNS[name]
    except KeyError:
        names = list(PATTERNS)
        choices = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
        raise ConfigError(f"pattern must be {choices}, got {name!r}") from None
