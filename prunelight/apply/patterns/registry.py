"""The sparse patterns by name: a class registers itself with :func:`register`.

The built-in patterns are registered by importing their modules in :mod:`prunelight.apply.patterns`.
"""

from __future__ import annotations

from prunelight.apply.patterns.base import SparsePattern
from prunelight.registry import Registry


def _unknown(name: str, names: list[str]) -> str:
    choices = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
    return f"pattern must be {choices}, got {name!r}"


PATTERNS: Registry[SparsePattern] = Registry("sparse pattern", _unknown)
"""Every registered pattern (one stateless instance each), in the order the choices are listed."""

register = PATTERNS.register
"""Class decorator: make ``cls`` the pattern called ``cls.name``."""

pattern_named = PATTERNS.named
"""The pattern called ``name``; a ConfigError listing the choices for any other name."""
