"""Gradient statistics against a hand computation over every gradient of every backward pass."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.loops import calibrate
from prunelight.trainer import PrunelightTrainer

WIKI_VALID = {"name": "wikitext2", "split": "validation"}


def _calibrate(folder, criterion: str, aggregation: str = "batch", **options):
    module = CalibrationModule(path=str(folder), dtype="float32")
    data = CalibrationDataModule([WIKI_VALID], nsamples=4, seqlen=32, batch_size=2)
    trainer = PrunelightTrainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    callback = ImportanceCallback(criterion, aggregation=aggregation, **options)
    return calibrate(trainer, module, data, callback), module, data


@pytest.mark.parametrize("aggregation", ["batch", "sample"])
def test_gradient_statistics_equal_a_hand_computation(tiny_llama, aggregation):
    result, module, data = _calibrate(tiny_llama, "taylor", aggregation)
    model, ids = module.model, data.windows.input_ids
    step = 1 if aggregation == "sample" else 2
    names = {
        "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
        "mlp": ("gate_proj", "up_proj", "down_proj"),
    }
    for layer in range(model.config.num_hidden_layers):
        block = model.model.layers[layer]
        parents = {"attention": block.self_attn, "mlp": block.mlp}
        for kind, projections in names.items():
            flat, squared_norms = [], []
            for start in range(0, len(ids), step):
                model.zero_grad()
                batch = ids[start : start + step]
                logits = model(input_ids=batch, use_cache=False).logits
                F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten()).backward()
                grads = [getattr(parents[kind], p).weight.grad.double().flatten() for p in projections]
                flat += grads
                squared_norms.append(sum(float(g.square().sum()) for g in grads))
            every = torch.cat(flat)
            stats = result.gradients[layer][kind]
            assert stats["elements"] == every.numel()
            assert stats["passes"] == len(squared_norms)
            assert stats["mean"] == pytest.approx(float(every.mean()), rel=1e-4, abs=1e-12)
            assert stats["std"] == pytest.approx(float(every.std(unbiased=False)), rel=1e-4)
            assert stats["min"] == pytest.approx(float(every.min()), rel=1e-5)
            assert stats["max"] == pytest.approx(float(every.max()), rel=1e-5)
            expected_norm = math.sqrt(sum(squared_norms) / len(squared_norms))
            assert stats["norm"] == pytest.approx(expected_norm, rel=1e-4)


def test_no_gradient_statistics_for_forward_criteria_or_when_off(tiny_llama):
    assert _calibrate(tiny_llama, "wanda")[0].gradients is None
    assert _calibrate(tiny_llama, "taylor", gradient_statistics=False)[0].gradients is None
    # and switching them off leaves the scores unchanged
    on = _calibrate(tiny_llama, "taylor")[0].table
    off = _calibrate(tiny_llama, "taylor", gradient_statistics=False)[0].table
    for a, b in zip(on.mlp + on.attention, off.mlp + off.attention, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
