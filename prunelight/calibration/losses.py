"""The calibration's loss: the mean next-token NLL of each window, with a gradient that costs one copy of
the logits instead of three.

A gradient calibration backpropagates the windows' loss through logits of ``batch x seqlen x vocab``:
10 GB in float32 for Qwen2.5's 152k vocabulary at 8 x 2048 tokens. ``F.cross_entropy`` on them keeps a
flattened copy of the shifted logits and their log-softmax for the backward, and the backward builds
gradients of that size (measured on a CPU, 2 x 2048 x 152k logits from a linear layer: a peak of 4.0 times
the logits' size, against 2.3 times here). :class:`WindowNLL` computes the loss and its gradient together,
a slice of positions at a time, into one buffer, and the backward only scales that buffer by the windows'
weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prunelight.models.logits import position_slices


def _gradient_slice(part: Tensor, target: Tensor, positions: int) -> Tensor:
    """d nll / d logits of one slice, float32: ``softmax - one_hot(target)``, averaged over the window's
    ``positions``."""
    grad = torch.softmax(part, dim=-1)
    grad.scatter_add_(-1, target.unsqueeze(-1), torch.full_like(grad[..., :1], -1.0))
    return grad.div_(positions)


def _nll(logits: Tensor, input_ids: Tensor, with_gradient: bool) -> tuple[Tensor, Tensor | None]:
    """Per-position NLL ``[batch, T-1]`` (float32) and, if asked, its gradient buffer in ``logits``' dtype."""
    batch, length, vocab = logits.shape
    targets = input_ids[:, 1:]
    grad = torch.zeros_like(logits) if with_gradient else None
    nll = torch.empty(batch, length - 1, dtype=torch.float32, device=logits.device)
    for at in position_slices(batch, length - 1, vocab):
        part, target = logits[:, at].float(), targets[:, at]
        nll[:, at] = F.cross_entropy(part.flatten(0, 1), target.flatten(), reduction="none").view(batch, -1)
        if grad is not None:
            grad[:, at] = _gradient_slice(part, target, length - 1)
    return nll, grad


class WindowNLL(torch.autograd.Function):
    """``nll[b] = mean over t < T-1 of -log softmax(logits[b, t])[ids[b, t+1]]``, in float32."""

    @staticmethod
    def forward(ctx, logits: Tensor, input_ids: Tensor) -> Tensor:
        nll, grad = _nll(logits, input_ids, with_gradient=ctx.needs_input_grad[0])
        ctx.save_for_backward(grad)
        return nll.mean(dim=1)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None]:
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None
        # in place (the buffer is this graph's alone; a second backward raises torch's in-place error), and
        # in float32: the weights are not rounded to a half-precision buffer's dtype before the product
        return grad.mul_(grad_output.view(-1, 1, 1)), None


def window_losses(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Mean next-token NLL of each window, in float32 whatever the model's dtype (:class:`WindowNLL`); under
    ``torch.no_grad()`` no gradient buffer is built."""
    if not (torch.is_grad_enabled() and logits.requires_grad):
        return _nll(logits, input_ids, with_gradient=False)[0].mean(dim=1)
    return WindowNLL.apply(logits, input_ids)
