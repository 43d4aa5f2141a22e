"""SparseGPT: one-shot pruning of one linear layer, with the inverse-Hessian update of the surviving weights.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", ICML 2023
(arXiv:2301.00774; reference code https://github.com/IST-DASLab/sparsegpt, ``SparseGPT.fasterprune``).

The layer computes ``y = x W^T``. Pruning it should keep ``X W^T`` on calibration inputs ``X`` close to the
dense output; that error is the quadratic form ``tr(dW H dW^T)`` with ``H = 2 X^T X / n``, the same for every
row. Optimal Brain Surgeon says how to remove one weight ``w_q`` of a row at the least cost: drop it and move
the rest of the row by ``-w_q / [H^-1]_qq * H^-1[:, q]``. Doing that weight by weight would need a fresh
``H^-1`` for every row and every removal; SparseGPT makes it cheap by processing the columns left to right and
only ever updating columns to the right of the one being pruned. The inverse Hessians of those shrinking
column sets are exactly the rows of the upper Cholesky factor ``U`` of ``H^-1``, so one factorisation serves
all rows, and the updates of a block of columns are applied lazily to the rest of the matrix as one matrix
product (the "lazy batch" update).

Which weights to prune is decided per block of ``block_size`` columns, from the OBS saliency
``w^2 / [U]_jj^2`` taken *after* the updates of earlier blocks (so the mask adapts to the compensation):

* unstructured, ``comparison="layer"`` (the paper's rule): the lowest ``round(sparsity * rows * block)``
  saliencies of the whole block;
* unstructured, ``comparison="row"``: the lowest ``round(sparsity * block)`` of each row of the block, so
  every output unit keeps the same number of inputs (Wanda found per-output comparison better for LLMs);
* N:M: in every group of ``m`` consecutive columns the ``m - n`` lowest of each row, chosen when the group is
  reached, so the group's saliencies already include the updates of the columns before it.

Counts are exact: the lowest ``k`` are picked by ``topk`` indices, never by a ``<= threshold`` test, which
would prune more than ``k`` on ties (the reference code's threshold also prunes ``k + 1`` per block).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from prunelight.errors import ConfigError

Comparison = Literal["row", "layer"]


def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    *,
    sparsity: float | None = None,
    n: int | None = None,
    m: int | None = None,
    comparison: Comparison = "row",
    block_size: int = 128,
    damping: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """Prune ``weight`` with SparseGPT and return ``(new_weight, keep_mask)``.

    Args:
        weight: ``[out_features, in_features]`` weight of a linear layer, any float dtype. Not modified.
        hessian: ``[in_features, in_features]`` Hessian of the layer's reconstruction error,
            ``sum over calibration tokens of 2 x x^T / n``. Any positive scale gives the same result, since
            the damping is relative to its mean diagonal. Not modified.
        sparsity: unstructured fraction of weights to prune, in ``[0, 1)``. Leave ``None`` for N:M.
        n: N:M pattern, keep ``n`` of every ``m`` consecutive input columns in each row (``n=2, m=4`` is
            2:4). Give both ``n`` and ``m``, or neither.
        m: see ``n``.
        comparison: unstructured only. ``"row"`` prunes ``round(sparsity * block)`` weights of every row in
            every column block; the count over a whole row is exactly ``sparsity * in_features`` when
            ``sparsity * block_size`` is an integer and ``block_size`` divides ``in_features``, and otherwise
            is the sum of the per-block roundings. ``"layer"`` (the paper's rule) prunes the
            ``round(sparsity * numel)`` lowest of each whole block; the layer's count is exactly
            ``sparsity * out * in`` when ``sparsity * out * block`` is an integer for every block.
        block_size: columns per lazy-update block. Larger blocks let the mask choice see more columns at once;
            for N:M it must be a multiple of ``m`` so that no group straddles two blocks.
        damping: added to the Hessian's diagonal as a fraction of its mean diagonal, so that it can be
            factorised when the calibration data do not span every input direction.

    Returns:
        The pruned weight in ``weight``'s dtype and device, exactly zero where the mask is ``False``, and the
        boolean keep mask ``[out_features, in_features]`` (``True`` = kept) that was used. Input columns that
        never carried signal (zero Hessian diagonal) are zeroed, as in the reference code, because no
        calibration evidence can say what they should be; the mask may still mark them kept.

    Raises:
        ConfigError: the arguments are inconsistent or out of range, or the damped Hessian is not positive
            definite (the message suggests a larger ``damping``).
    """
    nm = _check_arguments(weight, hessian, sparsity, n, m, comparison, block_size, damping)
    rows, columns = weight.shape

    with torch.no_grad():
        W = weight.detach().to(dtype=torch.float32, copy=True)
        H = hessian.detach().to(device=W.device, dtype=torch.float32, copy=True)
        if not bool(torch.isfinite(H).all()):
            raise ConfigError("hessian has NaN or infinite entries; check the calibration activations")

        # A column whose input was always zero has a zero Hessian row and column: it costs nothing to prune
        # and would make H singular. Give it a unit diagonal (decoupled from the rest) and zero its weights.
        dead = torch.diagonal(H) == 0
        H[dead, :] = 0
        H[:, dead] = 0
        torch.diagonal(H)[dead] = 1
        W[:, dead] = 0

        torch.diagonal(H).add_(damping * torch.diagonal(H).mean())
        Hinv = _upper_cholesky_of_inverse(H, damping)

        pruned = torch.zeros(rows, columns, dtype=torch.bool, device=W.device)
        for i1 in range(0, columns, block_size):
            i2 = min(i1 + block_size, columns)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            d1 = torch.diagonal(Hinv1)

            if nm is None:
                assert sparsity is not None
                mask1 = _lowest_mask(W1.square() / d1.square()[None, :], sparsity, comparison)
            else:
                mask1 = torch.zeros_like(W1, dtype=torch.bool)

            for i in range(count):
                if nm is not None and i % nm[1] == 0:
                    keep_n, group = nm
                    scores = W1[:, i : i + group].square() / d1[i : i + group].square()[None, :]
                    lowest = torch.topk(scores, group - keep_n, dim=1, largest=False).indices
                    mask1.scatter_(1, i + lowest, True)

                w = W1[:, i]
                q = w.masked_fill(mask1[:, i], 0.0)
                Q1[:, i] = q
                # OBS: removing (w - q) from column i is compensated along row i of U, over columns >= i.
                err = (w - q) / Hinv1[i, i]
                W1[:, i:] -= torch.outer(err, Hinv1[i, i:])
                Err1[:, i] = err

            W[:, i1:i2] = Q1
            pruned[:, i1:i2] = mask1
            # Lazy batch: the block's accumulated compensation reaches all later columns in one product.
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

        keep = ~pruned
        new_weight = W.masked_fill(pruned, 0.0).to(dtype=weight.dtype)
    return new_weight, keep


def layer_reconstruction_error(dense: Tensor, pruned: Tensor, inputs: Tensor) -> float:
    """Squared Frobenius norm ``|| X W_dense^T - X W_pruned^T ||_F^2``, in float64.

    This is the quantity SparseGPT minimises (up to the Hessian's ``2 / n`` scale), so it is the fair
    yardstick for comparing pruning methods on one layer. ``inputs`` is ``[tokens, in_features]``; leading
    batch dimensions are flattened.
    """
    if dense.shape != pruned.shape or dense.ndim != 2:
        raise ConfigError(
            f"dense and pruned weights must be 2-D of one shape, got {tuple(dense.shape)} and "
            f"{tuple(pruned.shape)}"
        )
    if inputs.shape[-1] != dense.shape[1]:
        raise ConfigError(
            f"inputs have {inputs.shape[-1]} features but the weight {tuple(dense.shape)} takes "
            f"{dense.shape[1]}"
        )
    with torch.no_grad():
        X = inputs.detach().reshape(-1, inputs.shape[-1]).to(torch.float64)
        delta = dense.detach().to(device=X.device, dtype=torch.float64) - pruned.detach().to(
            device=X.device, dtype=torch.float64
        )
        return float((X @ delta.T).square().sum())


def _lowest_mask(scores: Tensor, sparsity: float, comparison: Comparison) -> Tensor:
    """Boolean mask (``True`` = prune) of the ``round(sparsity * size)`` lowest scores per row or per block.

    Built from ``topk`` indices, so exactly that many entries are marked even when scores tie.
    """
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if comparison == "row":
        k = round(sparsity * scores.shape[1])
        if k > 0:
            mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, True)
    else:
        k = round(sparsity * scores.numel())
        if k > 0:
            flat = mask.view(-1)
            flat[torch.topk(scores.reshape(-1), k, largest=False).indices] = True
    return mask


def _upper_cholesky_of_inverse(H: Tensor, damping: float) -> Tensor:
    """Upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``).

    Row ``j`` of ``U``, from the diagonal on, is the (scaled) inverse Hessian of columns ``j..`` once columns
    ``..j-1`` are fixed, which is all the left-to-right sweep needs.
    """
    hint = f"the damped Hessian is not positive definite (damping={damping}); raise damping, e.g. to 0.1"
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise ConfigError(f"{hint} (Cholesky failed at column {int(info) - 1})")
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info) != 0:
        raise ConfigError(f"{hint} (its inverse is too ill-conditioned in float32)")
    return U


def _check_arguments(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float | None,
    n: int | None,
    m: int | None,
    comparison: str,
    block_size: int,
    damping: float,
) -> tuple[int, int] | None:
    """Validate everything before any work; return ``(n, m)`` for N:M, ``None`` for unstructured."""
    if weight.ndim != 2:
        raise ConfigError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ConfigError(f"weight must be a float tensor, got {weight.dtype}")
    columns = weight.shape[1]
    if hessian.shape != (columns, columns):
        raise ConfigError(
            f"hessian shape {tuple(hessian.shape)} does not match weight {tuple(weight.shape)}; "
            f"expected ({columns}, {columns}) (in_features x in_features)"
        )
    given_nm = n is not None or m is not None
    if (sparsity is None) == (not given_nm):
        raise ConfigError("give exactly one of sparsity (unstructured) or n and m (N:M), not both or neither")
    if not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be a positive integer, got {block_size!r}")
    if not damping >= 0:
        raise ConfigError(f"damping must be >= 0, got {damping}")
    if sparsity is not None:
        if not 0 <= sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
        if comparison not in ("row", "layer"):
            raise ConfigError(f"comparison must be 'row' or 'layer', got {comparison!r}")
        return None
    if n is None or m is None:
        raise ConfigError(f"N:M pruning needs both n and m, got n={n}, m={m}")
    if n < 1 or n >= m:
        raise ConfigError(f"N:M needs 1 <= n < m (keep n of every m), got n={n}, m={m}")
    if columns % m != 0:
        raise ConfigError(
            f"in_features {columns} of weight {tuple(weight.shape)} is not divisible by m={m}, "
            f"so the columns do not split into groups of {m}"
        )
    if block_size % m != 0:
        raise ConfigError(
            f"block_size {block_size} is not a multiple of m={m}; N:M groups must not straddle blocks"
        )
    return n, m
