"""Importance criteria (docs/design.md: Importance criteria): one small class per module, registered by name.

Each criterion says what it needs (its class attributes: gradients, input statistics, a Hessian, sequential
calibration, the sparse patterns it supports) and scores from it (:class:`~prunelight.importance.criteria.
base.Criterion`); everything else looks it up with :func:`criterion_info` and asks it, never compares its
name.
Structured criteria are written as a score per weight element of a projection, reduced to groups by one shared
sum (:func:`~prunelight.importance.groups.group_sum`), so a test can check each against a hand computation.

To add a criterion: a new module here with a :func:`register`-ed subclass of :class:`Criterion`, and one
import line below. It becomes a choice of ``importance.criterion`` (:data:`CriterionName`) at once.
"""

from __future__ import annotations

from typing import Literal

from prunelight.importance.criteria.base import Criterion
from prunelight.importance.criteria.registry import CRITERIA, criterion_info, register, sparse_criteria

# The built-in criteria, in the order the choices are listed; importing a module registers its class.
# isort: off
from prunelight.importance.criteria import magnitude  # noqa: E402,F401
from prunelight.importance.criteria import taylor  # noqa: E402,F401
from prunelight.importance.criteria import taylor2  # noqa: E402,F401
from prunelight.importance.criteria import wanda  # noqa: E402,F401
from prunelight.importance.criteria import fluctuation  # noqa: E402,F401
from prunelight.importance.criteria import block_influence  # noqa: E402,F401
from prunelight.importance.criteria import sparsegpt  # noqa: E402,F401
from prunelight.importance.criteria import obs  # noqa: E402,F401

# isort: on
from prunelight.importance.criteria.fluctuation import fluctuation_elements  # noqa: E402
from prunelight.importance.criteria.magnitude import magnitude_elements  # noqa: E402
from prunelight.importance.criteria.wanda import wanda_elements  # noqa: E402

CriterionName = Literal[tuple(CRITERIA)]  # type: ignore[valid-type]
"""The registered names, as the type of ``importance.criterion``: the CLI lists and checks them."""

__all__ = [
    "CRITERIA",
    "Criterion",
    "CriterionName",
    "criterion_info",
    "fluctuation_elements",
    "magnitude_elements",
    "register",
    "sparse_criteria",
    "wanda_elements",
]
