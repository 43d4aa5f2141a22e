"""What sparse scores need to know about a layer's inputs: per-feature norms (Wanda) and X^T X (SparseGPT).

Projections that read the same tensor share one statistic: q/k/v read the attention input, gate/up the MLP
input, o and down their own. Everything is a sum over calibration tokens, so the sums of N ranks are the
statistics of one process that saw every window (:meth:`LayerInputs.reduce`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunelight.models.adapters import LayerModules
from prunelight.models.projections import INPUT_OF


class LayerInputs:
    """Sums of one decoder layer's projection inputs, gathered by forward pre-hooks.

    Args:
        modules: the layer's projections.
        hessian: also sum ``x^T x`` (float32, ``in x in`` per shared input); SparseGPT's Hessian is
            ``2 X^T X / n``. Off for Wanda, which needs only the diagonal.
    """

    def __init__(self, modules: LayerModules, hessian: bool = False) -> None:
        self.modules = modules
        device = modules.q.weight.device
        self.sumsq = {
            name: torch.zeros(getattr(modules, name).in_features, dtype=torch.float64, device=device)
            for name in dict.fromkeys(INPUT_OF.values())  # one order on every rank: the reduce is in order
        }
        self.xtx: dict[str, torch.Tensor] = {}
        if hessian:
            self.xtx = {
                name: torch.zeros(n.numel(), n.numel(), dtype=torch.float32, device=device)
                for name, n in self.sumsq.items()
            }
        self.tokens = torch.zeros((), dtype=torch.float64, device=device)
        self._handles: list[RemovableHandle] = []

    def attach(self) -> LayerInputs:
        for name in self.sumsq:
            self._handles.append(getattr(self.modules, name).register_forward_pre_hook(self._hook(name)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_module: nn.Module, args: tuple) -> None:
            with torch.no_grad():
                x = args[0].detach().reshape(-1, args[0].shape[-1])
                self.sumsq[name].add_(
                    torch.linalg.vector_norm(x, dim=0, dtype=torch.float32).double().square()
                )
                if name in self.xtx:
                    xf = x.float()
                    self.xtx[name].addmm_(xf.T, xf)
                if name == "q":
                    self.tokens += x.shape[0]

        return hook

    def reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum across ranks (the strategy's all-reduce)."""
        self.sumsq = {k: reduce_sum(v.clone()) for k, v in self.sumsq.items()}
        self.xtx = {k: reduce_sum(v.clone()) for k, v in self.xtx.items()}
        self.tokens = reduce_sum(self.tokens.clone())

    def input_norm(self, projection: str) -> torch.Tensor:
        """``||X_j||_2`` over all calibration tokens, per input feature of ``projection``."""
        return self.sumsq[INPUT_OF[projection]].sqrt()

    def hessian(self, projection: str) -> torch.Tensor:
        """SparseGPT's ``H = 2 X^T X / n`` of ``projection``'s input."""
        if not self.xtx:
            raise RuntimeError("LayerInputs was built without hessian=True")
        return self.xtx[INPUT_OF[projection]] * (2.0 / float(self.tokens.clamp_min(1)))
