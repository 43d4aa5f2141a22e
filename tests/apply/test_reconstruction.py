"""Layer reconstruction: the refit of kept columns is the least-squares optimum (with and without an
intercept, shrinking to FLAP's bias compensation as damping grows); greedy grouped OBS picks, at every
step, the group a brute-force search over refits would pick, predicts its cost exactly and ends at the
refit of what it kept; batched, it removes the cheapest share of the live groups per step by one joint
update that is exact for the set (the refit of what it kept, the joint increase the measured one) and is
the exact greedy at its default; ReplaceMe's map recovers a known linear map and folds exactly; bad input
is a ConfigError that says to raise the damping. Tiny float64 tensors from a seeded generator."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from prunelight.apply.reconstruction import (
    fold_linear_map,
    input_moments,
    linear_map,
    lsq_refit,
    obs_greedy,
    obs_group_scores,
)
from prunelight.errors import ConfigError

D_OUT, D_IN, TOKENS = 5, 12, 60
F64 = torch.float64


def make_layer(seed: int = 0, d_out: int = D_OUT, d_in: int = D_IN, tokens: int = TOKENS):
    """Weight, bias and correlated calibration inputs with a non-zero mean (so an intercept matters)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_out, d_in, generator=g, dtype=F64)
    bias = torch.randn(d_out, generator=g, dtype=F64)
    mixing = torch.randn(d_in, d_in, generator=g, dtype=F64) / d_in**0.5 + torch.eye(d_in, dtype=F64)
    offset = torch.randn(d_in, generator=g, dtype=F64)
    X = torch.randn(tokens, d_in, generator=g, dtype=F64) @ mixing + offset
    return weight, bias, X


def moments(X: Tensor, center: bool = False) -> tuple[Tensor, Tensor | None]:
    return input_moments(X.T @ X, X.sum(0), X.shape[0], center)


def keep_ids(seed: int = 1, d_in: int = D_IN, kept: int = 7) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(d_in, generator=g)[:kept]


def output_error(
    X: Tensor, W: Tensor, b: Tensor | float, K: Tensor, W_K: Tensor, b_K: Tensor | float
) -> float:
    """``||X W^T + b - (X_K W_K^T + b_K)||_F^2`` over the calibration tokens."""
    return float((X @ W.T + b - X[:, K] @ W_K.T - b_K).square().sum())


def test_input_moments_are_second_moment_and_covariance() -> None:
    _, _, X = make_layer()
    H, mu = moments(X)
    C, mu_c = moments(X, center=True)
    torch.testing.assert_close(H, X.T @ X / TOKENS, rtol=0, atol=1e-12)
    torch.testing.assert_close(C, torch.cov(X.T, correction=0), rtol=0, atol=1e-12)
    torch.testing.assert_close(mu, X.mean(0), rtol=0, atol=1e-12)
    assert mu_c is not None and H.dtype == F64
    with pytest.raises(ConfigError, match="sum_x"):
        input_moments(X.T @ X, None, TOKENS, center=True)


def test_lsq_refit_beats_the_cut_and_every_perturbation() -> None:
    W, _, X = make_layer()
    H, _ = moments(X)
    K = keep_ids()
    new, _, errors = lsq_refit(W, H, K, damping=0.0)
    best = output_error(X, W, 0.0, K, new, 0.0)
    assert best < output_error(X, W, 0.0, K, W[:, K], 0.0)
    g = torch.Generator().manual_seed(7)
    for _ in range(20):
        nudged = new + 1e-3 * torch.randn(new.shape, generator=g, dtype=F64)
        assert output_error(X, W, 0.0, K, nudged, 0.0) > best
    dense = float((X @ W.T).square().sum())
    assert errors.after == pytest.approx(best / dense, rel=1e-9)
    assert errors.before == pytest.approx(output_error(X, W, 0.0, K, W[:, K], 0.0) / dense, rel=1e-9)
    assert errors.after < errors.before


def test_lsq_refit_without_damping_is_lstsq() -> None:
    W, _, X = make_layer()
    H, _ = moments(X)
    K = keep_ids()
    new, bias, _ = lsq_refit(W, H, K, damping=0.0)
    expected = torch.linalg.lstsq(X[:, K], X @ W.T).solution.T
    torch.testing.assert_close(new, expected, rtol=0, atol=1e-9)
    assert bias is None


def test_lsq_refit_with_intercept_is_lstsq_on_ones() -> None:
    W, b, X = make_layer()
    C, mu = moments(X, center=True)
    K = keep_ids()
    new, new_bias, errors = lsq_refit(W, C, K, damping=0.0, mean=mu, bias=b)
    augmented = torch.cat([X[:, K], torch.ones(TOKENS, 1, dtype=F64)], dim=1)
    solution = torch.linalg.lstsq(augmented, X @ W.T + b).solution.T
    torch.testing.assert_close(new, solution[:, :-1], rtol=0, atol=1e-9)
    assert new_bias is not None
    torch.testing.assert_close(new_bias, solution[:, -1], rtol=0, atol=1e-9)
    # The errors are per token, relative to the dense output's variance, and include the intercept.
    variance = float((X @ W.T - (X @ W.T).mean(0)).square().sum())
    assert errors.after == pytest.approx(output_error(X, W, b, K, new, new_bias) / variance, rel=1e-9)


def test_flap_bias_is_the_intercept_of_the_frozen_cut() -> None:
    W, b, X = make_layer()
    C, mu = moments(X, center=True)
    assert mu is not None
    K = keep_ids()
    removed = torch.tensor(sorted(set(range(D_IN)) - set(K.tolist())))
    flap = b + W[:, removed] @ mu[removed]
    # With W_K frozen, the best intercept by least squares on the ones column is FLAP's bias ...
    residual = X @ W.T + b - X[:, K] @ W[:, K].T
    best = torch.linalg.lstsq(torch.ones(TOKENS, 1, dtype=F64), residual).solution.flatten()
    torch.testing.assert_close(best, flap, rtol=0, atol=1e-9)
    # ... so the refit's "before" (covariance-measured) error is that of FLAP's compensated cut ...
    _, _, errors = lsq_refit(W, C, K, damping=0.0, mean=mu, bias=b)
    variance = float((X @ W.T - (X @ W.T).mean(0)).square().sum())
    assert errors.before == pytest.approx(output_error(X, W, b, K, W[:, K], flap) / variance, rel=1e-9)
    # ... and a refit shrunk ever harder toward W_K approaches FLAP's bias.
    gaps = []
    for damping in (1.0, 1e3, 1e6, 1e9):
        new, new_bias, _ = lsq_refit(W, C, K, damping=damping, mean=mu, bias=b)
        assert new_bias is not None
        gaps.append(float((new_bias - flap).abs().max()))
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-7
    torch.testing.assert_close(new, W[:, K], rtol=0, atol=1e-7)


def damped_error(W0: Tensor, W: Tensor, H: Tensor, damping: float) -> float:
    """``tr((W0 - W) (H + lam I) (W0 - W)^T)``, the error OBS predicts."""
    Hd = H + damping * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=F64)
    delta = W0 - W
    return float(torch.einsum("ij,jk,ik->", delta, Hd, delta))


def refit_full(W: Tensor, H: Tensor, K: Tensor, damping: float) -> Tensor:
    """:func:`lsq_refit` of ``K``, placed back in a full-width weight with zeros elsewhere."""
    new, _, _ = lsq_refit(W, H, K, damping=damping)
    full = torch.zeros_like(W)
    full[:, K] = new
    return full


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_greedy_obs_matches_brute_force_refits(damping: float) -> None:
    W, _, X = make_layer(seed=3)
    H, _ = moments(X)
    groups = torch.randperm(D_IN, generator=torch.Generator().manual_seed(4)).reshape(4, 3)
    order, increase, final, *_ = obs_greedy(W, H, groups, remove=3, damping=damping)
    assert increase.dtype == F64 and order.tolist() != []

    removed: list[int] = []
    error = 0.0
    for step in range(3):
        candidates = {}
        for g in sorted(set(range(4)) - set(removed)):
            gone = set(groups[removed + [g]].flatten().tolist())
            K = torch.tensor(sorted(set(range(D_IN)) - gone))
            candidates[g] = damped_error(W, refit_full(W, H, K, damping), H, damping)
        choice = min(candidates, key=candidates.__getitem__)
        assert int(order[step]) == choice
        assert float(increase[step]) == pytest.approx(candidates[choice] - error, rel=1e-9, abs=1e-9)
        removed.append(choice)
        error = candidates[choice]
        # The updated weight after this many steps is measured on the damped H at the predicted total.
        _, _, W_step, *_ = obs_greedy(W, H, groups, remove=step + 1, damping=damping)
        assert damped_error(W, W_step, H, damping) == pytest.approx(
            float(increase[: step + 1].sum()), rel=1e-9
        )

    kept = torch.tensor(sorted(set(range(D_IN)) - set(groups[removed].flatten().tolist())))
    torch.testing.assert_close(final, refit_full(W, H, kept, damping), rtol=0, atol=1e-9)
    assert bool((final[:, groups[removed].flatten()] == 0).all())


def test_obs_group_scores_rank_every_group() -> None:
    W, _, X = make_layer(seed=5)
    H, _ = moments(X)
    groups = torch.arange(D_IN).reshape(4, 3)
    order, increase, _, *_ = obs_greedy(W, H, groups, remove=3)
    position, scores = obs_group_scores(W, H, groups)
    assert sorted(position.tolist()) == [0, 1, 2, 3]
    assert position[order].tolist() == [0, 1, 2]
    torch.testing.assert_close(scores[order], increase)
    survivor = int(torch.nonzero(position == 3))
    assert scores[survivor] == float("inf")
    assert int(torch.argmax(scores)) == survivor


def test_obs_batching_is_off_by_default_and_a_batch_of_one_is_the_exact_greedy() -> None:
    W, _, X = make_layer(seed=5, d_in=24)
    H, _ = moments(X)
    groups = torch.randperm(24, generator=torch.Generator().manual_seed(2)).reshape(8, 3)
    exact = obs_greedy(W, H, groups, remove=7)
    assert exact.steps.tolist() == [1] * 7
    torch.testing.assert_close(exact.joint, exact.increase, rtol=0, atol=0)
    # A fraction too small for two groups in any step takes the one-at-a-time path, bit for bit.
    small = obs_greedy(W, H, groups, remove=7, batch_fraction=0.2)
    for a, b in zip(exact, small, strict=True):
        assert torch.equal(a, b)
    position, scores = obs_group_scores(W, H, groups)
    assert torch.equal(position[exact.order], torch.arange(7))
    assert torch.equal(scores[exact.order], exact.increase)


@pytest.mark.parametrize(("size", "fraction"), [(1, 0.25), (3, 0.5), (1, 1.0)])
@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_batched_obs_is_exact_for_the_sets_it_removes(size: int, fraction: float, damping: float) -> None:
    W, _, X = make_layer(seed=8, d_in=24, tokens=120)
    H, _ = moments(X)
    groups = torch.randperm(24, generator=torch.Generator().manual_seed(9)).reshape(-1, size)
    n = len(groups)
    result = obs_greedy(W, H, groups, remove=n - 1, damping=damping, batch_fraction=fraction)
    # Fewer steps than groups, every removal counted once.
    assert len(result.steps) < n - 1 and int(result.steps.sum()) == n - 1 and int(result.steps.max()) > 1
    assert sorted(result.order.tolist()) == sorted(set(result.order.tolist()))
    # The joint updates compose to the refit of what is kept ...
    removed = groups[result.order].flatten()
    kept = torch.tensor(sorted(set(range(24)) - set(removed.tolist())))
    torch.testing.assert_close(result.weight, refit_full(W, H, kept, damping), rtol=0, atol=1e-9)
    assert bool((result.weight[:, removed] == 0).all())
    # ... and the steps' joint increases add up to the measured error, which the per-group estimates do not.
    measured = damped_error(W, result.weight, H, damping)
    assert float(result.joint.sum()) == pytest.approx(measured, rel=1e-9)
    assert float(result.increase.sum()) != pytest.approx(measured, rel=1e-6)


def test_a_batched_step_takes_the_cheapest_single_removals_and_their_joint_cost() -> None:
    W, _, X = make_layer(seed=10, d_in=24, tokens=120)
    H, _ = moments(X)
    groups = torch.arange(24).reshape(8, 3)
    damping = 0.05
    result = obs_greedy(W, H, groups, remove=7, damping=damping, batch_fraction=0.5)
    assert result.steps.tolist()[:2] == [4, 2]

    def refit_error(removed: list[int]) -> float:
        K = torch.tensor(sorted(set(range(24)) - set(groups[removed].flatten().tolist())))
        return damped_error(W, refit_full(W, H, K, damping), H, damping)

    single = {g: refit_error([g]) for g in range(8)}
    cheapest = sorted(single, key=single.__getitem__)[:4]
    assert result.order[:4].tolist() == cheapest  # in the order of their scores
    torch.testing.assert_close(result.increase[:4], torch.tensor([single[g] for g in cheapest], dtype=F64))
    assert float(result.joint[0]) == pytest.approx(refit_error(cheapest), rel=1e-9)
    first_two = result.order[:6].tolist()
    assert float(result.joint[:2].sum()) == pytest.approx(refit_error(first_two), rel=1e-9)

    position, scores = obs_group_scores(W, H, groups, damping, batch_fraction=0.5)
    assert torch.equal(position[result.order], torch.arange(7))
    torch.testing.assert_close(scores[result.order], result.increase, rtol=0, atol=0)
    for start, k in zip(result.steps.cumsum(0) - result.steps, result.steps.tolist(), strict=True):
        step = result.increase[start : start + k]
        assert torch.equal(step, step.sort().values)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), True, "1/64"])
def test_a_bad_obs_batch_fraction_is_one_line(fraction) -> None:
    W, _, X = make_layer()
    H, _ = moments(X)
    with pytest.raises(ConfigError, match=r"batch fraction must be a number in \[0, 1\]") as raised:
        obs_group_scores(W, H, torch.arange(D_IN).reshape(4, 3), batch_fraction=fraction)
    assert "\n" not in str(raised.value)


def test_obs_keeps_dtype_and_inputs() -> None:
    W, _, X = make_layer()
    H, _ = moments(X)
    W32, H_before = W.float(), H.clone()
    _, _, new, *_ = obs_greedy(W32, H, torch.arange(D_IN).reshape(6, 2), remove=2)
    refit, _, _ = lsq_refit(W32, H, keep_ids())
    assert new.dtype == refit.dtype == torch.float32
    assert torch.equal(W32, W.float()) and torch.equal(H, H_before)


def test_linear_map_recovers_a_known_map_and_folds_exactly() -> None:
    g = torch.Generator().manual_seed(11)
    d, d_ff, tokens = 6, 10, 200
    X = torch.randn(tokens, d, generator=g, dtype=F64)
    A = torch.randn(d, d, generator=g, dtype=F64)
    T = linear_map(X.T @ X, X.T @ (X @ A))
    torch.testing.assert_close(T, A, rtol=0, atol=1e-9)

    W_down = torch.randn(d, d_ff, generator=g, dtype=F64)
    b = torch.randn(d, generator=g, dtype=F64)
    a = torch.randn(tokens, d_ff, generator=g, dtype=F64)
    folded, folded_bias = fold_linear_map(W_down, T, b)
    torch.testing.assert_close(folded, T.T @ W_down, rtol=0, atol=1e-12)
    assert folded_bias is not None
    torch.testing.assert_close((a @ W_down.T + b) @ T, a @ folded.T + folded_bias, rtol=0, atol=1e-9)


def test_bad_damping_and_singular_hessians_say_raise_the_damping() -> None:
    W, _, X = make_layer()
    H, _ = moments(X)
    groups = torch.arange(D_IN).reshape(4, 3)
    with pytest.raises(ConfigError, match="damping"):
        lsq_refit(W, H, keep_ids(), damping=-0.1)
    with pytest.raises(ConfigError, match="damping"):
        obs_greedy(W, H, groups, remove=1, damping=-0.1)
    with pytest.raises(ConfigError, match="damping"):
        linear_map(X.T @ X, X.T @ X, damping=-1.0)

    twin = X.clone()
    twin[:, 3] = twin[:, 2]  # two identical inputs: H is singular
    H_twin, _ = moments(twin)
    K = torch.arange(D_IN)
    with pytest.raises(ConfigError, match=r"\[5 x 12\].*damping") as raised:
        lsq_refit(W, H_twin, K, damping=0.0)
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match="damping"):
        obs_greedy(W, H_twin, groups, remove=1, damping=0.0)
    with pytest.raises(ConfigError, match="damping"):
        linear_map(twin.T @ twin, twin.T @ X, damping=0.0)
    # The suggested fix works.
    lsq_refit(W, H_twin, K, damping=0.01)
    obs_greedy(W, H_twin, groups, remove=1, damping=0.01)
    linear_map(twin.T @ twin, twin.T @ X, damping=0.01)


def test_obs_falls_back_to_pinv_when_a_group_block_will_not_factorise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    W, _, X = make_layer(seed=6)
    H, _ = moments(X)
    groups = torch.arange(D_IN).reshape(4, 3)
    expected = obs_greedy(W, H, groups, remove=3)
    real = torch.linalg.cholesky_ex

    def failing_blocks(A: Tensor, **kwargs):
        L, info = real(A, **kwargs)
        return (torch.full_like(L, float("nan")), torch.ones_like(info)) if A.ndim == 3 else (L, info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing_blocks)
    order, increase, new, *_ = obs_greedy(W, H, groups, remove=3)
    assert order.tolist() == expected[0].tolist()
    torch.testing.assert_close(increase, expected[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(new, expected[2], rtol=0, atol=1e-9)


def test_batched_obs_falls_back_to_pinv_when_a_set_block_will_not_factorise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    W, _, X = make_layer(seed=6, d_in=24, tokens=120)
    H, _ = moments(X)
    groups = torch.arange(24).reshape(12, 2)
    expected = obs_greedy(W, H, groups, remove=11, batch_fraction=0.5)
    real = torch.linalg.cholesky_ex

    def failing_blocks(A: Tensor, **kwargs):
        L, info = real(A, **kwargs)
        return (torch.full_like(L, float("nan")), torch.ones_like(info)) if A.shape[-1] < 24 else (L, info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing_blocks)
    result = obs_greedy(W, H, groups, remove=11, batch_fraction=0.5)
    assert result.order.tolist() == expected.order.tolist() and result.steps.tolist() == [6, 3, 1, 1]
    torch.testing.assert_close(result.joint, expected.joint, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.weight, expected.weight, rtol=0, atol=1e-9)
