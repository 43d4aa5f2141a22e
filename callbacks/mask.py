"""Keep the zeros of a sparse (unstructured) pruning while the pruned model is fine-tuned.

Sparse pruning zeroes single weights of the seven projections of every decoder layer. Any optimiser
step moves those zeros again (the gradient at a pruned position is not zero), and a LoRA merge adds the
dense ``B @ A`` on top of them, so the masks have to be enforced after each of these: after every
optimiser step for full fine-tuning, and after the merge for LoRA ("so sparsity survives LoRA (merge,
then mask)", docs/design.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from prunelight.errors import ConfigError
from prunelight.models.adapters import adapter_for
from prunelight.models.projections import PROJECTIONS

_Target = tuple[str, nn.Parameter, torch.Tensor]


class MaskCallback(L.Callback):
    """Re-applies boolean weight masks after every optimiser step, and after a LoRA merge.

    Masks are keyed by the dotted name of a weight-holding module relative to the plain Hugging Face
    ``*ForCausalLM`` model (``model.layers.0.self_attn.q_proj``); a mask is a bool tensor shaped like the
    weight, ``True`` where the weight is kept. The same names work on the plain model, on a peft model
    (its ``base_model.model.`` prefix and the ``.base_layer`` of LoRA-wrapped layers are looked through)
    and on a LightningModule holding either as ``.model`` (otherwise names are relative to the module).

    Names are resolved once, in ``on_fit_start``: that is the first hook after ``configure_model`` (where
    :class:`~prunelight.models.module.CausalLMModule` loads its weights) and after the strategy moved the
    model to its device, so the masks are moved to each weight's device there and never again. A name
    that matches no weight, or a mask whose shape differs from the weight, raises
    :class:`~prunelight.errors.ConfigError` before the first step. ``on_fit_start`` also applies every
    mask once, so a checkpoint whose pruned weights are only close to zero starts exactly sparse.

    The masks are re-applied in ``on_train_batch_end``, the first callback hook that runs after
    ``optimizer.step()`` in Lightning 2.6, with or without gradient accumulation (the optimisation loop
    steps inside the batch, then calls it). ``on_before_zero_grad`` is too late and at the wrong place: the
    automatic loop zeroes gradients inside the closure, after the next batch's ``training_step`` has
    already run its forward with the unmasked weights, and an in-place change there would invalidate the
    tensors autograd saved for that batch's backward; it is also never called after the last step.
    ``tests/callbacks/test_mask.py`` records the order. The masking is done only when ``global_step``
    moved (batches that only accumulate cost nothing) and only on weights that require gradients (frozen
    LoRA base weights stay masked without help, so LoRA training pays nothing per step).

    Supported strategies: single device and DDP (each replica masks itself identically). Sharded
    strategies (FSDP, DeepSpeed ZeRO-3) hold flattened or partitioned weights that the full-shape masks
    do not fit.

    Args:
        masks: module name -> bool mask (other dtypes are read as ``mask != 0``). The mapping is copied.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        if not masks:
            raise ConfigError("MaskCallback needs at least one mask; got an empty mapping")
        self.masks: dict[str, torch.Tensor] = {name: m.detach().to(torch.bool) for name, m in masks.items()}
        self._targets: list[_Target] = []
        self._step = -1

    @classmethod
    def from_zeros(cls, model: nn.Module) -> MaskCallback:
        """Masks that keep the non-zero weights of the seven projections of every decoder layer.

        This is how a saved sparse checkpoint (a normal Hugging Face checkpoint whose pruned weights are
        zeros) is fine-tuned later. ``model`` may be plain, peft-wrapped or a LightningModule.
        """
        root = _root(model)
        adapter = adapter_for(root)
        names = {id(module): name for name, module in _weight_modules(root)}
        masks: dict[str, torch.Tensor] = {}
        for layer in adapter.decoder_layers(root):
            modules = adapter.modules(layer)
            for projection in PROJECTIONS:
                module = _unwrap(getattr(modules, projection))
                masks[names[id(module)]] = module.weight.detach() != 0
        return cls(masks)

    def sparsity(self) -> float:
        """Fraction of masked-out elements over all masked weights, read from the masks."""
        total = sum(mask.numel() for mask in self.masks.values())
        kept = sum(int(mask.sum()) for mask in self.masks.values())
        return (total - kept) / total

    def apply(self, model: nn.Module) -> None:
        """Zero the masked-out weights of ``model`` now (plain, peft-wrapped or a LightningModule)."""
        _apply(self._resolve(model))

    def merge_and_mask(self, model: nn.Module) -> nn.Module:
        """Merge a peft model's adapters into its base weights, then re-apply the masks.

        The merge adds the dense ``B @ A`` to every adapted weight, which fills the pruned positions; the
        masks zero them again. Returns the plain transformers model that ``merge_and_unload()`` gives (a
        model without ``merge_and_unload`` is masked and returned as it is).
        """
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        self.apply(merged)
        return merged

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._targets = self._resolve(pl_module)
        self.masks = {name: mask for name, _, mask in self._targets}
        _apply(self._targets)
        self._step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self._step:
            self._step = trainer.global_step
            _apply([target for target in self._targets if target[1].requires_grad])

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._targets = []

    def _resolve(self, model: nn.Module) -> list[_Target]:
        """Each mask with its weight, the mask moved to the weight's device; ConfigError on a mismatch."""
        root = _root(model)
        weights = {name: module.weight for name, module in _weight_modules(root)}
        targets: list[_Target] = []
        for name, mask in self.masks.items():
            weight = weights.get(name)
            if weight is None:
                example = next((n for n in weights if n.endswith("q_proj")), next(iter(weights), ""))
                raise ConfigError(
                    f"mask {name!r} names no module with a weight in {type(root).__name__}; mask names are "
                    f"relative to the Hugging Face *ForCausalLM model, e.g. {example!r}"
                )
            if mask.shape != weight.shape:
                raise ConfigError(
                    f"mask {name!r} has shape {tuple(mask.shape)} but the weight of that module has shape "
                    f"{tuple(weight.shape)}"
                )
            targets.append((name, weight, mask.to(weight.device)))
        return targets


def _root(model: nn.Module) -> nn.Module:
    """The plain ``*ForCausalLM`` model (peft's LoRA layers still inside) that the mask names refer to."""
    inner = getattr(model, "model", None)
    if isinstance(model, L.LightningModule) and isinstance(inner, nn.Module):
        model = inner
    get_base_model = getattr(model, "get_base_model", None)  # a PeftModel; plain models have none
    return get_base_model() if callable(get_base_model) else model


def _weight_modules(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules that own a ``weight`` parameter, named with peft's ``.base_layer`` left out.

    A LoRA-wrapped layer owns no weight itself (it forwards to ``base_layer``), so each name stays unique.
    """
    for name, module in root.named_modules():
        if isinstance(module._parameters.get("weight"), nn.Parameter):
            yield ".".join(part for part in name.split(".") if part != "base_layer"), module


def _unwrap(module: nn.Module) -> nn.Module:
    """The layer that holds the weight: peft's ``base_layer`` for a LoRA-wrapped layer, else itself."""
    get_base_layer = getattr(module, "get_base_layer", None)
    return get_base_layer() if callable(get_base_layer) else module


@torch.no_grad()
def _apply(targets: list[_Target]) -> None:
    # masked_fill_ writes +0.0 even where the weight went -x, inf or nan; mul_ would leave -0.0 or nan.
    for _, weight, mask in targets:
        weight.masked_fill_(~mask, 0.0)
