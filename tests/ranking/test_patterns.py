"""Sparse patterns: each mask is checked against a hand computation (loops over rows, groups and tiles)."""

from __future__ import annotations

import math

import pytest
import torch

from prunelight.errors import ConfigError
from prunelight.ranking.patterns import (
    block_mask,
    nm_mask,
    tile_scores,
    tiles_then_singles,
    unstructured_mask,
)


def random_scores(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def split(values: list[float], keep: list[bool]) -> tuple[list[float], list[float]]:
    """(kept, removed) values."""
    kept = [v for v, k in zip(values, keep, strict=True) if k]
    removed = [v for v, k in zip(values, keep, strict=True) if not k]
    return kept, removed


def hand_tile_sums(scores: torch.Tensor, block: tuple[int, int]) -> dict[tuple[int, int], float]:
    """Sum of every whole tile, by loops over elements."""
    rows, cols = scores.shape[0] // block[0], scores.shape[1] // block[1]
    values = scores.tolist()
    sums = {}
    for tr in range(rows):
        for tc in range(cols):
            sums[(tr, tc)] = math.fsum(
                values[tr * block[0] + i][tc * block[1] + j] for i in range(block[0]) for j in range(block[1])
            )
    return sums


def tile_of(keep: torch.Tensor, tile: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    r, c = tile
    return keep[r * block[0] : (r + 1) * block[0], c * block[1] : (c + 1) * block[1]]


# ---------------------------------------------------------------- unstructured


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7, 0.95])
@pytest.mark.parametrize("shape", [(6, 10), (5, 7), (1, 33)])
def test_row_removes_exactly_the_lowest_of_every_row(shape: tuple[int, int], sparsity: float) -> None:
    scores = random_scores(shape, seed=shape[1])
    keep = unstructured_mask(scores, sparsity, "row")
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    count = round(sparsity * shape[1])
    for row, row_keep in zip(scores.tolist(), keep.tolist(), strict=True):
        kept, removed = split(row, row_keep)
        assert len(removed) == count
        assert sorted(removed) == sorted(row)[:count]
        if kept and removed:
            assert min(kept) >= max(removed)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.85])
def test_layer_removes_exactly_the_lowest_of_the_matrix(sparsity: float) -> None:
    scores = random_scores((7, 9), seed=3)
    keep = unstructured_mask(scores, sparsity, "layer")
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    kept, removed = split(scores.reshape(-1).tolist(), keep.reshape(-1).tolist())
    assert len(removed) == round(sparsity * scores.numel())
    assert sorted(removed) == sorted(scores.reshape(-1).tolist())[: len(removed)]
    if kept and removed:
        assert min(kept) >= max(removed)
    # rows are not balanced: the layer comparison is not the row comparison in disguise
    if sparsity == 0.5:
        assert len({int(n) for n in (~keep).sum(dim=1)}) > 1


@pytest.mark.parametrize("comparison", ["row", "layer"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.6])
def test_ties_never_remove_more_than_the_count(comparison: str, sparsity: float) -> None:
    equal = torch.full((4, 8), 0.5)
    keep = unstructured_mask(equal, sparsity, comparison)
    if comparison == "row":
        assert ((~keep).sum(dim=1) == round(sparsity * 8)).all()
    else:
        assert int((~keep).sum()) == round(sparsity * 32)
    # few distinct values: many ties at the threshold
    coarse = torch.randint(0, 3, (6, 10), generator=torch.Generator().manual_seed(1)).float()
    keep = unstructured_mask(coarse, sparsity, comparison)
    groups = list(zip(coarse.tolist(), keep.tolist(), strict=True))
    if comparison == "layer":
        groups = [(coarse.reshape(-1).tolist(), keep.reshape(-1).tolist())]
    for values, flags in groups:
        kept, removed = split(values, flags)
        assert len(removed) == round(sparsity * len(values))
        assert min(kept) >= max(removed)


def test_unknown_comparison_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="comparison"):
        unstructured_mask(random_scores((2, 4)), 0.5, "column")


# ---------------------------------------------------------------- N:M


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_nm_keeps_the_n_highest_of_every_group(n: int, m: int) -> None:
    scores = random_scores((5, 32), seed=n * 10 + m)
    keep = nm_mask(scores, n, m)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    for row, row_keep in zip(scores.tolist(), keep.tolist(), strict=True):
        for start in range(0, 32, m):
            values, flags = row[start : start + m], row_keep[start : start + m]
            kept, removed = split(values, flags)
            assert len(kept) == n
            assert sorted(kept) == sorted(values)[m - n :]
            assert min(kept) >= max(removed)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_nm_with_ties_keeps_exactly_n(n: int, m: int) -> None:
    keep = nm_mask(torch.ones(3, 16), n, m)
    assert (keep.reshape(3, 16 // m, m).sum(dim=2) == n).all()


def test_nm_inputs_not_a_multiple_of_m_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"layer 3 q_proj \(6x10\).*10 inputs.*M=4"):
        nm_mask(random_scores((6, 10)), 2, 4, name="layer 3 q_proj (6x10)")
    with pytest.raises(ConfigError, match="12 inputs"):
        nm_mask(random_scores((4, 12)), 4, 8)


@pytest.mark.parametrize(("n", "m"), [(4, 4), (5, 4), (8, 8), (0, 4), (-1, 4)])
def test_nm_needs_one_le_n_lt_m(n: int, m: int) -> None:
    with pytest.raises(ConfigError, match="1 <= N < M"):
        nm_mask(random_scores((2, 8)), n, m)


# ---------------------------------------------------------------- blocks


@pytest.mark.parametrize(("shape", "block"), [((64, 48), (16, 16)), ((24, 20), (8, 4))])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_block_removes_the_lowest_whole_tiles(
    shape: tuple[int, int], block: tuple[int, int], sparsity: float
) -> None:
    scores = random_scores(shape, seed=sum(shape))
    keep = block_mask(scores, sparsity, block)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    sums = hand_tile_sums(scores, block)
    removed, kept = [], []
    for tile, total in sums.items():
        flags = tile_of(keep, tile, block)
        assert flags.all() or not flags.any(), f"tile {tile} is partly removed"
        (kept if flags.all() else removed).append(total)
    assert len(removed) == round(sparsity * len(sums))
    assert int((~keep).sum()) == len(removed) * block[0] * block[1]
    assert sorted(removed) == pytest.approx(sorted(sums.values())[: len(removed)])
    if kept and removed:
        assert min(kept) >= max(removed)


def test_tile_scores_match_a_hand_sum() -> None:
    scores = random_scores((24, 20), seed=5)
    got = tile_scores(scores, (8, 4))
    assert got.shape == (3, 5)
    for (r, c), total in hand_tile_sums(scores, (8, 4)).items():
        assert float(got[r, c]) == pytest.approx(total, rel=1e-6)
    # a partial edge is not a tile
    assert tile_scores(random_scores((30, 45)), (8, 8)).shape == (3, 5)


@pytest.mark.parametrize(
    ("shape", "block", "fits"),
    [((40, 24), (16, 16), "8x8"), ((16, 20), (16, 16), "16x4"), ((9, 8), (2, 4), "1x4")],
)
def test_block_not_dividing_the_weight_is_a_config_error(
    shape: tuple[int, int], block: tuple[int, int], fits: str
) -> None:
    out, inp = shape
    with pytest.raises(
        ConfigError, match=rf"{block[0]}x{block[1]} tiles do not divide .*{out}x{inp}"
    ) as error:
        block_mask(random_scores(shape), 0.5, block, name="layer 0 up_proj")
    message = str(error.value)
    assert "layer 0 up_proj" in message
    assert f"e.g. {fits}" in message
    fit_rows, fit_cols = (int(x) for x in fits.split("x"))
    assert out % fit_rows == 0 and inp % fit_cols == 0


@pytest.mark.parametrize("block", [(0, 4), (4, -1), (4,), (4.0, 4)])
def test_bad_block_is_a_config_error(block: tuple) -> None:
    with pytest.raises(ConfigError, match="block"):
        block_mask(random_scores((8, 8)), 0.5, block)


# ---------------------------------------------------------------- tiles then singles


def check_tiles_then_singles(
    scores: torch.Tensor, tile_sparsity: float, sparsity: float, block: tuple[int, int]
) -> torch.Tensor:
    keep = tiles_then_singles(scores, tile_sparsity, sparsity, block)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    numel = scores.numel()
    total = round(sparsity * numel)
    tile_size = block[0] * block[1]
    sums = hand_tile_sums(scores, block)
    tiles = min(round(tile_sparsity * numel / tile_size), len(sums), total // tile_size)
    assert tiles * tile_size <= total
    assert int((~keep).sum()) == total
    # the requested tiles: the lowest tile sums, all removed
    lowest = sorted(sums, key=lambda t: sums[t])[:tiles]
    in_tiles = torch.zeros_like(keep)
    for tile in lowest:
        assert not tile_of(keep, tile, block).any(), f"tile {tile} is not whole"
        tile_of(in_tiles, tile, block).fill_(True)
    whole = sum(not tile_of(keep, t, block).any() for t in sums)
    assert whole >= tiles
    # the singles: the lowest of what the tiles left
    outside = ~in_tiles
    kept, removed = split(scores[outside].tolist(), keep[outside].tolist())
    assert len(removed) == total - tiles * tile_size
    if kept and removed:
        assert min(kept) >= max(removed)
    return keep


@pytest.mark.parametrize(("tile_sparsity", "sparsity"), [(0.25, 0.5), (0.5, 0.5), (0.1, 0.7), (0.4, 0.45)])
def test_tiles_then_singles_divisible(tile_sparsity: float, sparsity: float) -> None:
    check_tiles_then_singles(random_scores((32, 48), seed=7), tile_sparsity, sparsity, (8, 8))


@pytest.mark.parametrize(("tile_sparsity", "sparsity"), [(0.25, 0.5), (0.6, 0.6), (0.3, 0.8)])
def test_tiles_then_singles_partial_edges_go_to_singles(tile_sparsity: float, sparsity: float) -> None:
    scores = random_scores((30, 45), seed=11)  # 3x5 whole 8x8 tiles, partial edges of 6 rows and 5 columns
    keep = check_tiles_then_singles(scores, tile_sparsity, sparsity, (8, 8))
    edge = torch.ones_like(keep)
    edge[:24, :40] = False
    kept, removed = split(scores[edge].tolist(), keep[edge].tolist())
    assert removed, "the partial edges take part in the single-weight tier"


def test_tiles_never_exceed_the_total() -> None:
    scores = random_scores((16, 16), seed=2)
    # asks for 2 tiles of 64 but the total is 26: no tile, only the 26 lowest singles
    keep = check_tiles_then_singles(scores, 0.5, 0.1, (8, 8))
    assert keep.equal(unstructured_mask(scores, 0.1, "layer"))
    # asks for 3 tiles but the total (128) holds only 2
    check_tiles_then_singles(scores, 0.75, 0.5, (8, 8))
    # more tiles than the matrix has whole
    check_tiles_then_singles(random_scores((20, 20), seed=4), 0.9, 0.9, (8, 8))


def test_tiles_then_singles_without_tiles_is_the_layer_comparison() -> None:
    scores = random_scores((12, 20), seed=9)
    for sparsity in (0.0, 0.3, 0.75):
        assert tiles_then_singles(scores, 0.0, sparsity, (4, 4)).equal(
            unstructured_mask(scores, sparsity, "layer")
        )


def test_tiles_then_singles_smaller_than_a_tile() -> None:
    scores = random_scores((6, 5), seed=1)
    keep = check_tiles_then_singles(scores, 0.5, 0.5, (8, 8))
    assert keep.equal(unstructured_mask(scores, 0.5, "layer"))


def test_tiles_stay_whole_with_minus_infinite_scores() -> None:
    scores = random_scores((8, 9), seed=3) + 1
    scores[4:8, 4:8] = 0.0  # the lowest tile, at the bottom right
    scores[0, 8] = scores[1, 8] = -math.inf  # partial edge, ahead of the tile in memory order
    keep = tiles_then_singles(scores, 16 / 72, 17 / 72, (4, 4))
    assert int((~keep).sum()) == 17
    assert not keep[4:8, 4:8].any()
    assert int((~keep[:, 8]).sum()) == 1


# ---------------------------------------------------------------- sparsity range


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "0.5", None])
def test_sparsity_outside_zero_one_is_a_config_error(sparsity: object) -> None:
    scores = random_scores((16, 16))
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        unstructured_mask(scores, sparsity, "row")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        unstructured_mask(scores, sparsity, "layer")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        block_mask(scores, sparsity, (4, 4))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^sparsity must be in \[0, 1\)"):
        tiles_then_singles(scores, 0.1, sparsity, (4, 4))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^tile sparsity must be in \[0, 1\)"):
        tiles_then_singles(scores, sparsity, 0.5, (4, 4))  # type: ignore[arg-type]
