"""Fused Triton kernels for the calibration hooks, used on CUDA tensors when Triton is installed.

Why: a Taylor calibration step calls its gradient hook once per projection weight (224 times for a 7B
model) and the forward hooks once per layer. In plain torch the hook multiplies W and g into a third
weight-sized tensor, reads it back for the group sums, and the gradient statistics read g twice more
(``var_mean``, ``aminmax``): six passes over 13 GB per backward on a 7B model, about a seventh of the
backward's own time on an H100. :func:`taylor_scores` reads W and g once and returns the group scores
and the gradient's moments together (:func:`taylor_group_scores` is the torch path, and the Taylor
criteria's definition); :func:`influence_sum` reads a layer's input and output hidden
states once, where ``F.cosine_similarity`` on float32 copies makes several passes over twice the bytes.

Each tile writes partial sums to a small buffer that torch then sums, so results are deterministic (no
atomics). Sums are taken in float32 from products formed in float32; the torch path forms the product in
the weights' dtype, so the two agree to rounding (tested in ``tests/importance/test_kernels.py``, which
runs these kernels through Triton's interpreter on the CPU). ``PRUNELIGHT_KERNELS=torch`` turns them off.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from prunelight.models.projections import ROW_PROJECTIONS

try:  # Triton ships with CUDA builds of torch; CPU installs may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def taylor_group_scores(
    weight: torch.Tensor, grad: torch.Tensor, projection: str, groups: int, second_order: bool
) -> torch.Tensor:
    """Group sums of |W * g| (plus 0.5 * (W * g)^2 for ``taylor2``); g is the gradient of one batch.

    This runs once per weight per backward, so it is written for speed: the product is formed in the
    weights' dtype (the gradient already has that precision) and the sums of |.| and (.)^2 are taken by
    ``vector_norm`` in float32 without materialising them (on an H100 with a 7B model this halved the
    hooks' cost against casting both operands to float32 first).
    """
    wg = weight.detach() * grad
    out, inp = wg.shape
    if projection in ROW_PROJECTIONS:
        view, dims = wg.view(groups, -1), (1,)
    else:
        view, dims = wg.view(out, groups, inp // groups), (0, 2)
    score = torch.linalg.vector_norm(view, ord=1, dim=dims, dtype=torch.float32)
    if second_order:
        score = score + 0.5 * torch.linalg.vector_norm(view, ord=2, dim=dims, dtype=torch.float32).square()
    return score.double()


def kernels_available(tensor: torch.Tensor) -> bool:
    """Whether the fused kernels run for ``tensor``: a CUDA tensor, Triton importable, not switched off."""
    return triton is not None and tensor.is_cuda and os.environ.get("PRUNELIGHT_KERNELS", "") != "torch"


def gradient_moments(grad: torch.Tensor) -> torch.Tensor:
    """``[sum, sum of squares, min, max]`` of ``grad`` in float64 (the torch path: two passes)."""
    var, mean = torch.var_mean(grad, correction=0)
    low, high = torch.aminmax(grad)
    mean, var = mean.double(), var.double()
    n = grad.numel()
    return torch.stack([mean * n, (var + mean * mean) * n, low.double(), high.double()])


def taylor_scores(
    weight: torch.Tensor,
    grad: torch.Tensor,
    projection: str,
    groups: int,
    second_order: bool,
    moments: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Group scores of |W * g| (+ 0.5 (W * g)^2) in float64, and ``grad``'s moments if asked.

    The moments are rows of ``[sum, sum of squares, min, max]``, one per disjoint part of ``grad`` (one
    row for the torch path, one per tile for the kernel), which
    :class:`~prunelight.importance.gradients.GradientStatistics` combines once per batch.
    """
    if kernels_available(grad):
        return taylor_scores_triton(weight, grad, projection, groups, second_order, moments)
    score = taylor_group_scores(weight, grad, projection, groups, second_order)
    return score, gradient_moments(grad)[None] if moments else None


def influence_sum(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of 1 - cos(h_in, h_out), float64: a decoder layer's block influence."""
    if kernels_available(h_in):
        return influence_sum_triton(h_in, h_out)
    cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
    return (1.0 - cos).sum(dtype=torch.float64)


# ---------------------------------------------------------------------- Triton
_TILE_R, _TILE_C = 32, 256
_ROWS_PER_PROGRAM = 16
_EPS = 1e-8  # F.cosine_similarity's default

if triton is not None:

    @triton.jit
    def _taylor_tile(
        w_ptr,
        g_ptr,
        l1_ptr,
        l2_ptr,
        stats_ptr,
        R,
        C,
        stride_w,
        stride_g,
        TILE_R: tl.constexpr,
        TILE_C: tl.constexpr,
        BY_ROW: tl.constexpr,
        SECOND: tl.constexpr,
        MOMENTS: tl.constexpr,
    ):
        pid_r = tl.program_id(0)
        pid_c = tl.program_id(1)
        rows = pid_r * TILE_R + tl.arange(0, TILE_R)
        cols = pid_c * TILE_C + tl.arange(0, TILE_C)
        row_ok = rows < R
        col_ok = cols < C
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)
        w = tl.load(w_ptr + rows64[:, None] * stride_w + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + rows64[:, None] * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        p = w * g
        if BY_ROW:  # partial row sums of this column tile: l1[pid_c, rows]
            tl.store(l1_ptr + pid_c * R + rows, tl.sum(tl.abs(p), axis=1), mask=row_ok)
            if SECOND:
                tl.store(l2_ptr + pid_c * R + rows, tl.sum(p * p, axis=1), mask=row_ok)
        else:  # partial column sums of this row tile: l1[pid_r, cols]
            tl.store(l1_ptr + pid_r * C + cols, tl.sum(tl.abs(p), axis=0), mask=col_ok)
            if SECOND:
                tl.store(l2_ptr + pid_r * C + cols, tl.sum(p * p, axis=0), mask=col_ok)
        if MOMENTS:
            tile = pid_r * tl.num_programs(1) + pid_c
            total = tl.sum(tl.sum(g, axis=1), axis=0)
            total_sq = tl.sum(tl.sum(g * g, axis=1), axis=0)
            low = tl.min(tl.min(tl.where(mask, g, float("inf")), axis=1), axis=0)
            high = tl.max(tl.max(tl.where(mask, g, float("-inf")), axis=1), axis=0)
            tl.store(stats_ptr + tile * 4 + 0, total)
            tl.store(stats_ptr + tile * 4 + 1, total_sq)
            tl.store(stats_ptr + tile * 4 + 2, low)
            tl.store(stats_ptr + tile * 4 + 3, high)

    @triton.jit
    def _one_minus_cos_rows(
        a_ptr,
        b_ptr,
        out_ptr,
        N,
        H,
        stride_a,
        stride_b,
        eps,
        ROWS: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < N
        rows64 = rows.to(tl.int64)
        dot = tl.zeros([ROWS], dtype=tl.float32)
        na = tl.zeros([ROWS], dtype=tl.float32)
        nb = tl.zeros([ROWS], dtype=tl.float32)
        for start in range(0, H, BLOCK_H):
            cols = start + tl.arange(0, BLOCK_H)
            mask = row_ok[:, None] & (cols < H)[None, :]
            a = tl.load(a_ptr + rows64[:, None] * stride_a + cols[None, :], mask=mask, other=0.0)
            b = tl.load(b_ptr + rows64[:, None] * stride_b + cols[None, :], mask=mask, other=0.0)
            a, b = a.to(tl.float32), b.to(tl.float32)
            dot += tl.sum(a * b, axis=1)
            na += tl.sum(a * a, axis=1)
            nb += tl.sum(b * b, axis=1)
        cos = dot / tl.maximum(tl.sqrt(na) * tl.sqrt(nb), eps)
        tl.store(out_ptr + rows, 1.0 - cos, mask=row_ok)


def taylor_scores_triton(
    weight: torch.Tensor,
    grad: torch.Tensor,
    projection: str,
    groups: int,
    second_order: bool,
    moments: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`taylor_scores` in one pass over W and g (wherever Triton runs, its interpreter included)."""
    w, g = weight.detach(), grad
    if w.stride(1) != 1 or g.stride(1) != 1:
        w, g = w.contiguous(), g.contiguous()
    rows, cols = w.shape
    by_row = projection in ROW_PROJECTIONS
    grid = (triton.cdiv(rows, _TILE_R), triton.cdiv(cols, _TILE_C))
    partial_shape = (grid[1], rows) if by_row else (grid[0], cols)
    l1 = torch.empty(partial_shape, dtype=torch.float32, device=w.device)
    l2 = torch.empty(partial_shape, dtype=torch.float32, device=w.device) if second_order else l1
    stats = torch.empty((grid[0] * grid[1], 4), dtype=torch.float32, device=w.device) if moments else l1
    _taylor_tile[grid](
        w, g, l1, l2, stats, rows, cols, w.stride(0), g.stride(0),
        TILE_R=_TILE_R, TILE_C=_TILE_C, BY_ROW=by_row, SECOND=second_order, MOMENTS=moments,
    )  # fmt: skip
    score = l1.sum(dim=0, dtype=torch.float64)
    if second_order:
        score = score + 0.5 * l2.sum(dim=0, dtype=torch.float64)
    if groups != score.numel():  # groups are runs of rows (q, k, v, gate, up) or columns (o, down)
        score = score.view(groups, -1).sum(dim=1)
    return score, stats if moments else None


def influence_sum_triton(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """:func:`influence_sum` reading both hidden states once, in their own dtype."""
    hidden = h_in.shape[-1]
    a, b = h_in.detach().reshape(-1, hidden), h_out.detach().reshape(-1, hidden)
    if a.stride(1) != 1 or b.stride(1) != 1:
        a, b = a.contiguous(), b.contiguous()
    n = a.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=a.device)
    grid = (triton.cdiv(n, _ROWS_PER_PROGRAM),)
    _one_minus_cos_rows[grid](
        a, b, out, n, hidden, a.stride(0), b.stride(0), _EPS, ROWS=_ROWS_PER_PROGRAM, BLOCK_H=256
    )
    return out.sum(dtype=torch.float64)
