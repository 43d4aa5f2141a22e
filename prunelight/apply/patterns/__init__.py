"""Sparse patterns: one small class per module, registered by name (:class:`SparsePattern`).

``sparsity.pattern`` stays a string in the YAML; the sparse stage, the mask code and the settings check look
the object up with :func:`pattern_named` and ask it. To add a pattern: a new module here with a
:func:`register`-ed subclass, and one import line below.
"""

from __future__ import annotations

from typing import Literal

from prunelight.apply.patterns.base import SparsePattern
from prunelight.apply.patterns.registry import PATTERNS, pattern_named, register

# The built-in patterns, in the order the choices are listed; importing a module registers its class.
# isort: off
from prunelight.apply.patterns import unstructured  # noqa: E402,F401
from prunelight.apply.patterns import nm  # noqa: E402,F401
from prunelight.apply.patterns import block  # noqa: E402,F401
from prunelight.apply.patterns import hybrid  # noqa: E402,F401

# isort: on

PatternName = Literal[tuple(PATTERNS)]  # type: ignore[valid-type]
"""The registered names, as the type of ``sparsity.pattern``: the CLI lists and checks them."""

__all__ = ["PATTERNS", "PatternName", "SparsePattern", "pattern_named", "register"]
