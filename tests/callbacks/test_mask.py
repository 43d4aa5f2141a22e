"""MaskCallback keeps pruned weights at exactly zero through full fine-tuning (with and without gradient
accumulation) and through LoRA training plus merge, on a tiny random llama; each check has a control run
that shows the zeros do not survive without it."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from conftest import tiny_config
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from prunelight.callbacks.mask import MaskCallback
from prunelight.errors import ConfigError

VOCAB = 64
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config("llama", VOCAB), dtype=torch.float32)


def _masks(model: nn.Module, keep: float = 0.5, seed: int = 1) -> dict[str, torch.Tensor]:
    """Exactly ``keep`` of each projection kept, at random positions."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, module in model.named_modules():
        if name.endswith(tuple(TARGETS)):
            mask = torch.zeros(module.weight.numel(), dtype=torch.bool)
            mask[torch.randperm(mask.numel(), generator=generator)[: round(keep * mask.numel())]] = True
            masks[name] = mask.view_as(module.weight)
    return masks


def _weights(model: nn.Module, names) -> dict[str, torch.Tensor]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name: base.get_submodule(name).weight for name in names}


def _masked_nonzero(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    weights = _weights(model, masks)
    return sum(int((weights[name][~mask] != 0).sum()) for name, mask in masks.items())


def _kept_changed(model: nn.Module, before: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> float:
    """Fraction of the kept weights that differ from ``before``."""
    weights = _weights(model, masks)
    changed = sum(int((weights[n][m] != before[n][m]).sum()) for n, m in masks.items())
    return changed / sum(int(m.sum()) for m in masks.values())


class TinyLM(L.LightningModule):
    """Causal LM loss on random ids with a large SGD step; records masked non-zeros seen at each forward."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor] | None = None, lr: float = 1.0):
        super().__init__()
        self.model, self.masks, self.lr = model, masks, lr
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        if self.masks is not None:
            self.seen.append(_masked_nonzero(self.model, self.masks))
        (ids,) = batch
        return self.model(input_ids=ids, labels=ids).loss

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def _fit(module: L.LightningModule, callbacks: list[L.Callback], max_steps: int = 3, accumulate: int = 1):
    ids = torch.randint(0, VOCAB, (16, 16), generator=torch.Generator().manual_seed(2))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, DataLoader(TensorDataset(ids), batch_size=2))
    return trainer


@pytest.mark.parametrize(("accumulate", "steps"), [(1, 3), (2, 4)])
def test_full_finetuning_keeps_masked_weights_at_zero(accumulate, steps):
    model = _model()
    masks = _masks(model)
    before = {n: w.detach().clone() for n, w in _weights(model, masks).items()}
    assert _masked_nonzero(model, masks) > 0  # not pre-masked: on_fit_start must apply the masks
    module = TinyLM(model, masks)
    trainer = _fit(module, [MaskCallback(masks)], max_steps=steps, accumulate=accumulate)
    assert trainer.global_step == steps
    assert module.seen == [0] * (steps * accumulate)  # no forward ever ran with a masked weight
    assert _masked_nonzero(model, masks) == 0
    assert _kept_changed(model, before, masks) > 0.99


def test_without_the_callback_the_zeros_do_not_survive():
    model = _model()
    masks = _masks(model)
    MaskCallback(masks).apply(model)
    assert _masked_nonzero(model, masks) == 0
    _fit(TinyLM(model), [])
    assert _masked_nonzero(model, masks) > 0.9 * sum(int((~m).sum()) for m in masks.values())


class _Order(L.Callback):
    def __init__(self, events: list[str]):
        self.events = events

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        self.events.append("on_before_zero_grad")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.events.append("on_train_batch_end")


def test_on_train_batch_end_is_the_first_hook_after_the_optimizer_step():
    """Why MaskCallback masks in on_train_batch_end and not in on_before_zero_grad (Lightning 2.6)."""
    events: list[str] = []

    class Recorded(TinyLM):
        def training_step(self, batch, batch_idx):
            events.append("training_step")
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            optimizer = super().configure_optimizers()
            optimizer.register_step_post_hook(lambda *_: events.append("optimizer.step"))
            return optimizer

    _fit(Recorded(_model()), [_Order(events)], max_steps=2, accumulate=2)
    window = ["training_step", "on_before_zero_grad", "on_train_batch_end"]  # zero_grad after the forward
    window += ["training_step", "optimizer.step", "on_train_batch_end"]
    assert events == window * 2  # and no on_before_zero_grad after the last step


def test_masking_in_on_before_zero_grad_would_break_backward():
    """The in-place mask would land between a forward and its backward (the control of the test above)."""

    class TooLate(MaskCallback):
        def on_before_zero_grad(self, trainer, pl_module, optimizer):
            self.apply(pl_module)

    model = _model()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _fit(TinyLM(model), [TooLate(_masks(model))])


def test_lora_merge_and_mask():
    model = _model()
    masks = _masks(model)
    callback = MaskCallback(masks)
    callback.apply(model)
    before = {n: w.detach().clone() for n, w in _weights(model, masks).items()}
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
    _fit(TinyLM(lora, masks), [callback])
    for name, weight in _weights(lora, masks).items():  # frozen base weights: untouched, still masked
        assert torch.equal(weight, before[name]), name

    control = copy.deepcopy(lora).merge_and_unload()
    assert _masked_nonzero(control, masks) > 0.9 * sum(int((~m).sum()) for m in masks.values())

    merged = callback.merge_and_mask(lora)
    assert type(merged) is LlamaForCausalLM
    assert not any("lora" in name or "base_layer" in name for name, _ in merged.named_modules())
    assert _masked_nonzero(merged, masks) == 0
    assert _kept_changed(merged, before, masks) > 0.99  # the training reached the merged weights


def test_from_zeros_recovers_the_masks_and_sparsity():
    model = _model()
    masks = _masks(model, keep=0.25)
    MaskCallback(masks).apply(model)
    recovered = MaskCallback.from_zeros(model)
    assert recovered.masks.keys() == masks.keys()
    assert len(masks) == 7 * model.config.num_hidden_layers
    for name, mask in masks.items():
        assert torch.equal(recovered.masks[name], mask), name
    assert recovered.sparsity() == MaskCallback(masks).sparsity() == 0.75

    lora = get_peft_model(model, LoraConfig(r=4, target_modules=TARGETS))
    for wrapped in (lora, TinyLM(lora)):
        from_wrapped = MaskCallback.from_zeros(wrapped)
        assert from_wrapped.masks.keys() == masks.keys()
        assert all(torch.equal(from_wrapped.masks[n], m) for n, m in masks.items())


def test_names_resolve_on_plain_peft_and_lightning_module():
    masks = _masks(_model())
    for wrap in (
        lambda m: m,
        lambda m: get_peft_model(m, LoraConfig(r=4, target_modules=TARGETS)),
        lambda m: TinyLM(get_peft_model(m, LoraConfig(r=4, target_modules=TARGETS))),
    ):
        model = _model()
        MaskCallback(masks).apply(wrap(model))
        assert _masked_nonzero(model, masks) == 0

    class Holder(L.LightningModule):  # no ``model`` attribute: names are relative to the module itself
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

    holder = Holder(_model())
    with pytest.raises(ConfigError, match="names no module"):
        MaskCallback(masks).apply(holder)
    MaskCallback({f"net.{n}": m for n, m in masks.items()}).apply(holder)
    assert _masked_nonzero(holder.net, masks) == 0


def test_unknown_module_name_is_a_config_error():
    callback = MaskCallback({"model.layers.9.self_attn.q_proj": torch.ones(32, 32, dtype=torch.bool)})
    with pytest.raises(ConfigError, match=r"'model\.layers\.9\.self_attn\.q_proj' names no module"):
        callback.apply(_model())
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="names no module"):  # at fit start, before any step
        _fit(TinyLM(model), [callback])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shape_mismatch_is_a_config_error():
    callback = MaskCallback({"model.layers.0.self_attn.k_proj": torch.ones(32, 32, dtype=torch.bool)})
    with pytest.raises(ConfigError, match=r"k_proj' has shape \(32, 32\).*has shape \(16, 32\)"):
        callback.apply(_model())


def test_empty_masks_are_a_config_error():
    with pytest.raises(ConfigError, match="at least one mask"):
        MaskCallback({})
