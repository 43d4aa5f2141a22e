"""Layer-by-layer calibration (docs/design.md: Sparse (mask) pruning), as Wanda and SparseGPT run it.

Layer ``l`` is scored on the outputs of layers ``0..l-1`` *after* they were pruned, so each layer's masks
(and SparseGPT's reconstruction) account for the error of the layers before it. Only one layer's inputs
are held at a time (``nsamples x seqlen x hidden``), never the whole model's activations.

How: :class:`Catchers` swap every decoder layer for a stand-in that records what the model passes it (the
first layer's hidden states; every layer's keyword arguments: rotary embeddings, masks, which differ per
layer in models with sliding-window layers such as Gemma 3) and passes the hidden states through
untouched, so the capture pass costs the embeddings only. :func:`prune_sequentially` then runs the real
layers one at a time over the recorded inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelight.importance.inputs import LayerInputs
from prunelight.models.adapters import FamilyAdapter, LayerModules


@dataclass
class Captured:
    """Per batch: the first layer's input, and every layer's keyword arguments."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    kwargs: list[list[dict[str, Any]]] = field(default_factory=list)
    """``kwargs[layer][batch]``."""


class _Catcher(nn.Module):
    """Stands in for decoder layer ``index`` during the capture pass."""

    def __init__(self, layer: nn.Module, index: int, captured: Captured, offload: bool) -> None:
        super().__init__()
        self.layer, self.index, self.captured, self.offload = layer, index, captured, offload

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:
            raise RuntimeError("decoder layers are expected to take everything but hidden_states by keyword")
        if self.index == 0:
            hidden = hidden_states.detach()
            self.captured.hidden.append(hidden.cpu() if self.offload else hidden)
        self.captured.kwargs[self.index].append(kwargs)
        return hidden_states

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:  # the model may read layer attributes (attention_type, ...)
            return getattr(super().__getattr__("layer"), name)


class Catchers:
    """Context manager: while active, the model's decoder layers record their inputs into :attr:`captured`."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, offload: bool = False) -> None:
        self.layers = adapter.decoder_layers(model)
        self.offload = offload
        self.captured = Captured(kwargs=[[] for _ in self.layers])
        self._originals: list[nn.Module] = []

    def __enter__(self) -> Catchers:
        self._originals = list(self.layers)
        for index, layer in enumerate(self._originals):
            self.layers[index] = _Catcher(layer, index, self.captured, self.offload)
        return self

    def __exit__(self, *exc: object) -> None:
        for index, layer in enumerate(self._originals):
            self.layers[index] = layer


@contextmanager
def on_device(modules: list[nn.Module], device: torch.device | None) -> Iterator[None]:
    """``modules`` on ``device`` inside the block, then back where each was (``None``: left in place).

    The layer-by-layer passes run an offloaded model this way: under FSDP2 each rank holds a whole copy of
    the model in host memory and moves one decoder layer at a time to its GPU. Moving keeps each
    ``nn.Parameter`` object, so a layer whose weights change shape on the device goes back with the new shape.
    """
    homes = [next(m.parameters()).device for m in modules]
    moved = [(m, home) for m, home in zip(modules, homes, strict=True) if device not in (None, home)]
    for module, _ in moved:
        module.to(device)
    try:
        yield
    finally:
        for module, home in moved:
            module.to(home)


def layer_output(out: Any) -> torch.Tensor:
    """The hidden states a decoder layer returns (alone, or first in a tuple in older transformers)."""
    return out[0] if isinstance(out, tuple) else out


def prune_sequentially(
    model: nn.Module,
    adapter: FamilyAdapter,
    captured: Captured,
    prune_layer: Callable[[int, LayerModules, LayerInputs], None],
    hessian: bool = False,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
) -> None:
    """For each layer: gather its input statistics, ``prune_layer`` it, and feed its pruned outputs on.

    Args:
        captured: the recorded inputs (this rank's batches under DDP).
        prune_layer: called with the layer index, its projections and the reduced input statistics; it
            changes the weights in place.
        hessian: gather ``X^T X`` too (SparseGPT).
        reduce_sum: all-reduce of the statistics across ranks (None: one process).
    """
    hidden = captured.hidden
    layers = adapter.decoder_layers(model)
    for index, layer in enumerate(
        tqdm(layers, desc="sequential pruning", unit="layer", disable=not progress)
    ):
        device = next(layer.parameters()).device
        kwargs = captured.kwargs[index]
        inputs = LayerInputs(adapter.modules(layer), hessian).attach()
        try:
            with torch.no_grad():
                for h, kw in zip(hidden, kwargs, strict=True):
                    layer(h.to(device), **kw)
        finally:
            inputs.detach()
        if reduce_sum is not None:
            inputs.reduce(reduce_sum)
        prune_layer(index, inputs.modules, inputs)
        del inputs
        with torch.no_grad():
            hidden = [
                layer_output(layer(h.to(device), **kw)).to(h.device)
                for h, kw in zip(hidden, kwargs, strict=True)
            ]
