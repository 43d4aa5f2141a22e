"""Sparse patterns: element scores of one weight in, a keep mask out (docs/design.md: Sparse (mask) pruning).

Every pattern is a pure function of a score tensor ``[out, in]`` (higher = more important) and returns a
bool mask of the same shape, True where the weight stays. Ties are broken by position (a stable sort), so
a pattern removes exactly the count it is asked for, never more: ``<= threshold`` would remove every tied
element at the threshold.

- unstructured: ``comparison="row"`` removes ``round(s * in)`` lowest of every output row (the original
  Wanda's comparison group: each output neuron keeps the same number of inputs); ``"layer"`` removes
  ``round(s * numel)`` lowest of the whole matrix.
- N:M: of every ``m`` consecutive inputs of a row, the ``n`` highest stay (2:4 keeps 2 of 4, the layout
  of NVIDIA's sparse tensor cores).
- blocks: tiles of ``rows x cols``; a tile's score is the sum of its elements' scores; the lowest tiles of
  the matrix are removed whole.
- tiles then singles (the two mask tiers of the hybrid): tiles first, then single weights among those left.
"""

from __future__ import annotations

import math

import torch

from prunelight.errors import ConfigError


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` lowest entries of a 1-D tensor, ties broken by position."""
    if count <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    return torch.argsort(scores, stable=True)[:count]


def check_sparsity(sparsity: float, what: str = "sparsity") -> None:
    if not (isinstance(sparsity, int | float) and 0.0 <= sparsity < 1.0):
        raise ConfigError(f"{what} must be in [0, 1), got {sparsity!r} (0.5 zeroes half the weights)")


def unstructured_mask(scores: torch.Tensor, sparsity: float, comparison: str = "row") -> torch.Tensor:
    """Remove the lowest-scored ``sparsity`` of every row (``row``) or of the whole matrix (``layer``)."""
    check_sparsity(sparsity)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if comparison == "row":
        count = round(sparsity * scores.shape[1])
        if count:
            order = torch.argsort(scores, dim=1, stable=True)[:, :count]
            keep.scatter_(1, order, False)
    elif comparison == "layer":
        keep.view(-1)[_lowest(scores.reshape(-1), round(sparsity * scores.numel()))] = False
    else:
        raise ConfigError(f"comparison must be 'row' or 'layer', got {comparison!r}")
    return keep


def check_nm(n: int, m: int, in_features: int | None = None, name: str = "weight") -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m):
        raise ConfigError(f"N:M sparsity needs 1 <= N < M (N weights kept of every M), got N={n}, M={m}")
    if in_features is not None and in_features % m:
        raise ConfigError(
            f"N:M groups run along the input dimension, but {name} has {in_features} inputs, not a multiple "
            f"of M={m}; pick an M that divides {in_features} or protect that layer"
        )


def nm_mask(scores: torch.Tensor, n: int, m: int, name: str = "weight") -> torch.Tensor:
    """Keep the ``n`` highest of every ``m`` consecutive inputs of each row."""
    out, inp = scores.shape
    check_nm(n, m, inp, name)
    groups = scores.reshape(out, inp // m, m)
    order = torch.argsort(groups, dim=2, stable=True)[..., : m - n]
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(2, order, False)
    return keep.reshape(out, inp)


def check_block(block: tuple[int, int]) -> None:
    if len(block) != 2 or any(not isinstance(b, int) or b < 1 for b in block):
        raise ConfigError(f"block must be two positive integers (rows, cols), got {block}")


def tile_grid(shape: torch.Size | tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    """Whole tiles along each dimension; a partial edge tile is not a tile (see :func:`block_mask`)."""
    return shape[0] // block[0], shape[1] // block[1]


def tile_scores(scores: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Sum of element scores of every whole tile, shape ``[tile_rows, tile_cols]``."""
    rows, cols = tile_grid(scores.shape, block)
    full = scores[: rows * block[0], : cols * block[1]]
    return full.reshape(rows, block[0], cols, block[1]).sum(dim=(1, 3), dtype=torch.float64)


def _tile_mask(scores: torch.Tensor, block: tuple[int, int], tiles: int) -> torch.Tensor:
    rows, cols = tile_grid(scores.shape, block)
    keep_tiles = torch.ones(rows * cols, dtype=torch.bool, device=scores.device)
    keep_tiles[_lowest(tile_scores(scores, block).reshape(-1), tiles)] = False
    keep = torch.ones_like(scores, dtype=torch.bool)
    grid = keep_tiles.view(rows, cols).repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    keep[: rows * block[0], : cols * block[1]] = grid
    return keep


def block_mask(
    scores: torch.Tensor, sparsity: float, block: tuple[int, int] = (16, 16), name: str = "weight"
) -> torch.Tensor:
    """Remove the ``round(sparsity * tiles)`` lowest whole tiles.

    The weight must divide into tiles: a partial edge tile could only be removed by breaking the "whole
    tile or untouched" rule or by missing the target, so it is an error that names the shape and a tile
    size that fits. (The hybrid is different: it leaves partial edges to its single-weight tier.)
    """
    check_sparsity(sparsity)
    check_block(block)
    out, inp = scores.shape
    if out % block[0] or inp % block[1]:
        fits = (math.gcd(out, block[0]), math.gcd(inp, block[1]))
        raise ConfigError(
            f"{block[0]}x{block[1]} tiles do not divide {name} of shape {out}x{inp}; use a tile size that "
            f"divides every pruned weight (e.g. {fits[0]}x{fits[1]}), protect that layer, or use the hybrid "
            "pattern, which leaves partial edge tiles to its single-weight tier"
        )
    rows, cols = tile_grid(scores.shape, block)
    return _tile_mask(scores, block, round(sparsity * rows * cols))


def tiles_then_singles(
    scores: torch.Tensor, tile_sparsity: float, sparsity: float, block: tuple[int, int] = (16, 16)
) -> torch.Tensor:
    """The two mask tiers of the hybrid: ``tile_sparsity`` of the matrix as whole tiles, then single weights
    (lowest first, over the whole matrix) until ``round(sparsity * numel)`` weights are removed.

    Tiles are whole tiles of the divisible part; the tile count is capped so tiles never exceed the total
    target, and whatever the tiles cannot cover (rounding, partial edges) the single weights make up.
    """
    check_sparsity(sparsity)
    check_sparsity(tile_sparsity, "tile sparsity")
    check_block(block)
    total = round(sparsity * scores.numel())
    rows, cols = tile_grid(scores.shape, block)
    tile_size = block[0] * block[1]
    tiles = min(round(tile_sparsity * scores.numel() / tile_size), rows * cols, total // tile_size)
    keep = _tile_mask(scores, block, tiles)
    remaining = total - tiles * tile_size
    if remaining > 0:
        # the single weights: the ``remaining`` lowest among the weights the tiles left (ranking only those,
        # not the whole matrix with the tiles masked to -inf, which a score of -inf would tie with)
        flat = keep.view(-1)
        left = flat.nonzero().squeeze(1)
        flat[left[_lowest(scores.reshape(-1)[left], remaining)]] = False
    return keep
