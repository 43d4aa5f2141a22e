"""The calibration loss gives F.cross_entropy's values and gradients, in slices, and keeps one buffer of the
logits' size for the backward instead of the log-softmax and a flattened copy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunelight.calibration import losses
from prunelight.calibration.losses import window_losses


def reference(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    return nll.view(ids.shape[0], -1).mean(dim=1)


def case(dtype: torch.dtype = torch.float32, batch: int = 3, length: int = 11, vocab: int = 37):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, length, 8, generator=g, dtype=dtype, requires_grad=True)
    head = torch.randn(vocab, 8, generator=g, dtype=dtype) * 2
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    weights = torch.rand(batch, generator=g) + 0.5  # a mixture's per-window weights
    return hidden, head, ids, weights


def grad_of(loss_fn, hidden, head, ids, weights) -> tuple[torch.Tensor, torch.Tensor]:
    hidden.grad = None
    nll = loss_fn(hidden @ head.T, ids)
    (nll * weights.to(nll.dtype)).mean().backward()
    return nll.detach(), hidden.grad.clone()


@pytest.mark.parametrize("chunk", [37, 3 * 37 * 4, 2**26])  # 1 position a slice, uneven, one slice
def test_values_and_gradients_equal_cross_entropy(monkeypatch, chunk):
    monkeypatch.setattr("prunelight.models.logits.SLICE_ELEMENTS", chunk)
    hidden, head, ids, weights = case()
    nll, grad = grad_of(window_losses, hidden, head, ids, weights)
    expected_nll, expected_grad = grad_of(reference, hidden, head, ids, weights)
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, expected_nll, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_bfloat16_logits_get_the_float32_loss_and_a_gradient_within_bfloat16_rounding():
    hidden, head, ids, weights = case(torch.bfloat16)
    nll, grad = grad_of(window_losses, hidden, head, ids, weights)
    expected_nll, expected_grad = grad_of(reference, hidden, head, ids, weights)
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, expected_nll, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=2e-2, atol=1e-3)


def saved_bytes(loss_fn, logits: torch.Tensor, ids: torch.Tensor) -> int:
    """Bytes the autograd graph of the loss keeps for its backward, beyond the logits themselves."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() != logits.data_ptr():
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(logits, ids).mean()
    return sum(saved)


def test_the_backward_keeps_one_buffer_of_the_logits_size_not_two():
    hidden, head, ids, _ = case(length=65, vocab=301)
    logits = hidden @ head.T
    size = logits.numel() * logits.element_size()
    ours, theirs = saved_bytes(window_losses, logits, ids), saved_bytes(reference, logits, ids)
    assert ours <= size * 1.01
    assert theirs >= 1.8 * size  # the shifted copy and its log-softmax: what this loss exists to avoid


def test_without_gradients_no_gradient_is_computed(monkeypatch):
    slices = []
    gradient_slice = losses._gradient_slice
    monkeypatch.setattr(losses, "_gradient_slice", lambda *a: slices.append(1) or gradient_slice(*a))
    hidden, head, ids, _ = case()
    logits = hidden @ head.T  # requires grad
    with torch.no_grad():
        torch.testing.assert_close(window_losses(logits, ids), reference(logits, ids), rtol=0, atol=0)
    assert not slices
    window_losses(logits, ids)
    assert slices  # the same call with gradients on builds them
