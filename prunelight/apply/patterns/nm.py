"""N:M: keep the ``n`` highest of every ``m`` consecutive inputs of each row (2:4 runs on sparse tensor
cores)."""

from __future__ import annotations

import torch

from prunelight.apply.patterns.base import PatternSettings, ProjectionShape, SparsePattern
from prunelight.apply.patterns.registry import register
from prunelight.errors import ConfigError
from prunelight.ranking.patterns import check_nm, nm_mask


@register
class NM(SparsePattern):
    name = "nm"
    n_of_m = True

    def mask(self, scores: torch.Tensor, pattern: ProjectionShape, label: str) -> torch.Tensor:
        return nm_mask(scores, pattern.n, pattern.m, label)

    def check(self, settings: PatternSettings) -> None:
        """``n < m``, and no sparsity or allocation that would contradict the fixed ``1 - n/m``."""
        check_nm(settings.n, settings.m)
        if settings.sparsity is not None and abs(settings.sparsity - self.target(settings)) > 1e-9:
            raise ConfigError(
                f"pattern nm with n={settings.n}, m={settings.m} fixes the sparsity at "
                f"{self.target(settings)}, but sparsity={settings.sparsity} was given; leave sparsity out "
                "(null) or change n/m"
            )
        if settings.allocation != "uniform":
            raise ConfigError("N:M fixes every layer's sparsity at 1 - n/m; use allocation: uniform")

    def target(self, settings: PatternSettings) -> float:
        return 1.0 - settings.n / settings.m
