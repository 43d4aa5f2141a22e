"""Algorithms registered by name: criteria, sparse patterns and reconstructions each keep one of these.

A configuration names an algorithm (``importance.criterion: taylor``); the registry maps the name to one
stateless instance of the class that implements it, so callers ask the object what it needs instead of
comparing names, and adding an algorithm is a new class with ``@REGISTRY.register`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from prunelight.errors import ConfigError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Instances by name, in registration order (the order the choices are listed in).

    Args:
        kind: what is registered, for the error of a name registered twice.
        unknown: the one-line message for a name nobody registered, given the name and the choices.
    """

    def __init__(self, kind: str, unknown: Callable[[str, list[str]], str]) -> None:
        super().__init__()
        self.kind, self.unknown = kind, unknown

    def register(self, cls: Any) -> Any:
        """Class decorator: make one instance of ``cls`` the entry called ``cls.name``."""
        if cls.name in self:
            raise ValueError(f"{self.kind} {cls.name!r} is registered twice")
        self[cls.name] = cls()
        return cls

    def named(self, name: str) -> T:
        """The entry called ``name``; a :class:`ConfigError` listing the choices for any other name."""
        try:
            return self[name]
        except KeyError:
            raise ConfigError(self.unknown(name, list(self))) from None
