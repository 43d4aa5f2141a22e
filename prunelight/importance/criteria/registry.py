"""The criteria by name: a class registers itself with :func:`register` and is then a choice everywhere.

The built-in criteria are registered by importing their modules in :mod:`prunelight.importance.criteria`;
adding one is a new module with a registered class and one import line there.
"""

from __future__ import annotations

from prunelight.importance.criteria.base import Criterion
from prunelight.registry import Registry

CRITERIA: Registry[Criterion] = Registry(
    "criterion", lambda name, names: f"unknown criterion {name!r}; choose one of {', '.join(names)}"
)
"""Every registered criterion (one instance each: criteria hold no state), in registration order, the order
the choices are listed in."""

register = CRITERIA.register
"""Class decorator: make ``cls`` the criterion called ``cls.name``."""

criterion_info = CRITERIA.named
"""The criterion called ``name``; a ConfigError listing the choices for any other name."""


def sparse_criteria() -> tuple[str, ...]:
    """The criteria mask pruning can use, in registration order."""
    return tuple(name for name, criterion in CRITERIA.items() if criterion.sparse)
