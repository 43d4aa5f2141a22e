"""SparseGPT (Frantar & Alistarh, 2023) as a criterion: it does not score weights, it prunes each projection
from its layer's Hessian and reconstructs the surviving weights (:func:`~prunelight.apply.sparsegpt.
sparsegpt_prune`, a tensor-only algorithm module)."""

from __future__ import annotations

import torch

from prunelight.apply.sparsegpt import sparsegpt_prune
from prunelight.errors import ConfigError
from prunelight.importance.criteria.base import Criterion, ProjectionPattern
from prunelight.importance.criteria.registry import register
from prunelight.importance.inputs import LayerInputs


@register
class SparseGPT(Criterion):
    """Prune and reconstruct, layer by layer on the outputs of the pruned layers before; unstructured, N:M."""

    name = "sparsegpt"
    description = "SparseGPT: prune and reconstruct each weight from the layer's Hessian"
    structured = False
    sparse = True
    needs_layer_inputs = True
    needs_hessian = True
    sequential_only = True
    patterns = ("unstructured", "nm")

    def prune(  # type: ignore[override]
        self,
        weight: torch.Tensor,
        inputs: LayerInputs | None,
        projection: str,
        pattern: ProjectionPattern,
        label: str,
    ) -> torch.Tensor:
        assert inputs is not None
        nm = pattern.n_of_m
        new, keep = sparsegpt_prune(
            weight,
            inputs.hessian(projection),
            sparsity=None if nm else pattern.sparsity,
            n=pattern.n if nm else None,
            m=pattern.m if nm else None,
            comparison=pattern.comparison,
            block_size=pattern.block_size,
            damping=pattern.damping,
        )
        weight.copy_(new)
        return keep

    def check_sparse(self, pattern: str, calibration: str) -> None:
        if self.patterns is not None and pattern not in self.patterns:
            raise ConfigError(
                f"sparsegpt reconstructs weights for unstructured and nm patterns, not {pattern}; "
                "use wanda or magnitude for block and hybrid"
            )
        if self.sequential_only and calibration != "sequential":
            raise ConfigError(
                "sparsegpt reconstructs each layer from the outputs of the already pruned layers before it; "
                "set sparsity.calibration: sequential"
            )
