"""Layer reconstruction after structured pruning: refit what is kept so that the layer's output barely moves.

A linear layer computes ``y = W x (+ b)`` with ``W`` of shape ``[d_out, d_in]``; its *columns* are input
channels. Removing a set ``M`` of columns (attention heads of o_proj, channels of down_proj) and keeping ``K``
changes the output on calibration inputs ``X`` by ``W_M X_M``; the layer-wise error of any replacement
``W'`` is ``tr((W - W') H (W - W')^T)`` with ``H`` the inputs' second moment. Three tools work on that
quadratic form (derivations in the notes behind this module, summarised here):

* :func:`lsq_refit`: the best ``W'_K`` (and intercept) for a fixed ``K``. Ridge-damped, it is shrunk toward
  the original ``W_K``, which makes it *equal* to a damped joint Optimal-Brain-Surgeon removal of ``M``
  (the block-inverse identity ``G_MK = -G_MM H_MK H_KK^-1`` with ``G = H^-1``), so the ``obs`` criterion and
  the refit agree. With the input mean and the covariance it also fits the intercept; freezing ``W'_K = W_K``
  there gives exactly FLAP's bias compensation ``b + W_M mu_M`` (An et al., AAAI 2024).
* :func:`obs_greedy`: ZipLM's exact greedy grouped OBS (Kurtic et al., NeurIPS
  2023; code as carried in IST-DASLab/DarwinLM ``fast_obc_struct.py``): remove one group of columns at a
  time, the one whose exact error increase ``tr(W_g (G_gg)^-1 W_g^T)`` is least, update the other columns,
  and downdate ``G`` by a Schur complement instead of inverting again; or, batched, the cheapest share of
  the live groups per step with one joint update. :func:`obs_group_scores` runs it to the end to score
  every group.
* :func:`linear_map` / :func:`fold_linear_map`: ReplaceMe's training-free linear map (Shopkhoev et al.,
  2025): a removed span of layers is replaced by ``Y ~ X T`` fitted by least squares, folded into the
  preceding down projection so that no parameter is added.

Everything is solved in float64 with Cholesky factorisations (never an explicit inverse of the full
matrix) and cast back to the weight's dtype at the end. Damping is always relative: ``lam = damping *
mean(diag(H))`` over *all* input columns of ``H``, the same number in :func:`lsq_refit` and
:func:`obs_greedy`, so that their results coincide for the same ``damping``. A factorisation that
fails is a :class:`~prunelight.errors.ConfigError` that suggests a larger damping.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from prunelight.errors import ConfigError


class ReconstructionError(NamedTuple):
    """Relative layer-wise reconstruction errors of a cut, without and with the refit.

    Both are ``tr((W - W~) H (W - W~)^T) / tr(W H W^T)`` with the *undamped* ``H`` given to
    :func:`lsq_refit`: the output error energy over the calibration inputs as a fraction of the dense
    output's. ``before`` takes ``W~`` = ``W`` with the removed columns zeroed; ``after`` the refitted
    ``W'_K`` (zero elsewhere). When ``H`` is the covariance (an intercept was fitted), both include the best
    intercept for their ``W~``: ``before`` is then the error of FLAP's mean compensation, not of the bare cut,
    and the denominator is the dense output's variance.
    """

    before: float
    after: float


def input_moments(
    sum_xx: Tensor, sum_x: Tensor | None, tokens: int, center: bool
) -> tuple[Tensor, Tensor | None]:
    """Turn accumulated ``sum x x^T``, ``sum x`` over ``tokens`` inputs into ``(H, mu)``, in float64.

    ``H = S / n`` (second moment) or, with ``center``, the covariance ``S / n - mu mu^T``: the uncentred form
    refits a layer whose bias stays as it is, the centred one one whose intercept is refitted too (pass
    ``mu`` to :func:`lsq_refit`). Using an uncentred refit and then adding FLAP's bias would count the mean
    twice. ``mu = sum_x / n``, or ``None`` when ``sum_x`` is ``None`` (allowed only without ``center``).
    ``H`` is symmetrised, since float rounding in the accumulation can leave it slightly asymmetric. The
    scale ``1 / n`` does not change any result of this module (damping is relative); it keeps the error
    numbers per token.
    """
    if sum_xx.ndim != 2 or sum_xx.shape[0] != sum_xx.shape[1]:
        raise ConfigError(f"sum_xx must be a square [d, d] matrix, got shape {tuple(sum_xx.shape)}")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise ConfigError(f"tokens must be a positive integer (the count behind the sums), got {tokens!r}")
    if center and sum_x is None:
        raise ConfigError("center=True needs sum_x (the sum of the inputs) to subtract the mean")
    if sum_x is not None and sum_x.shape != (sum_xx.shape[0],):
        raise ConfigError(f"sum_x shape {tuple(sum_x.shape)} does not match sum_xx {tuple(sum_xx.shape)}")
    S = sum_xx.detach().to(torch.float64)
    H = (S + S.T) / (2 * tokens)
    mu = None if sum_x is None else sum_x.detach().to(device=H.device, dtype=torch.float64) / tokens
    if center:
        assert mu is not None
        H = H - torch.outer(mu, mu)
    return H, mu


def lsq_refit(
    weight: Tensor,
    hessian: Tensor,
    keep: Tensor,
    damping: float = 0.01,
    mean: Tensor | None = None,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, ReconstructionError]:
    """Refit the kept input columns of one projection so that it best reproduces the dense output.

    Minimises ``||W X - W'_K X_K||^2 + lam ||W'_K - W_K||^2`` with ``lam = damping * mean(diag(H))``:
    ``W'_K = (W H[:, K] + lam W_K) (H_KK + lam I)^-1``. The ridge term pulls toward the original ``W_K``,
    not toward 0, because that is what a damped joint OBS removal of the other columns gives (the same
    ``lam`` as :func:`obs_greedy`, so for the same ``damping`` the two agree exactly); ``damping=0`` is
    the plain least squares ``W H[:, K] H_KK^-1``.

    Args:
        weight: ``[d_out, d_in]`` weight of the dense layer, any float dtype. Not modified.
        hessian: ``[d_in, d_in]`` second moment of the layer's inputs, or their covariance when ``mean`` is
            given (see :func:`input_moments`). Any positive scale gives the same weights.
        keep: 1-D integer tensor of the kept column ids ``K``, distinct; the refitted columns come back in
            this order.
        damping: ridge strength relative to the mean diagonal of ``hessian``; ``>= 0``.
        mean: ``[d_in]`` calibration mean of the inputs, to fit an intercept:
            ``b' = b + W mu - W'_K mu_K``. With ``W'_K = W_K`` that is FLAP's ``b + W_M mu_M``.
        bias: ``[d_out]`` bias of the dense layer, or ``None`` (taken as 0 when an intercept is fitted).

    Returns:
        ``(new_weight, new_bias, errors)``: ``new_weight`` is ``[d_out, |K|]`` in ``weight``'s dtype and
        device; ``new_bias`` is the fitted intercept with ``mean`` (in ``bias``'s dtype, or ``weight``'s
        when there was none), otherwise ``bias`` unchanged (an uncentred refit does not move the bias),
        ``None`` for no bias; ``errors`` is a :class:`ReconstructionError`.

    Raises:
        ConfigError: shapes or ids do not fit, ``damping < 0``, or ``H_KK + lam I`` is singular (the message
            names the projection and suggests raising the reconstruction damping).
    """
    d_out, d_in = _check_weight_hessian(weight, hessian, "lsq_refit")
    K = _check_keep(keep, d_in)
    _check_damping(damping)
    if mean is not None and mean.shape != (d_in,):
        raise ConfigError(f"mean shape {tuple(mean.shape)} does not match weight {tuple(weight.shape)}")
    if bias is not None and bias.shape != (d_out,):
        raise ConfigError(f"bias shape {tuple(bias.shape)} does not match weight {tuple(weight.shape)}")

    with torch.no_grad():
        W = weight.detach().to(torch.float64)
        H = hessian.detach().to(device=W.device, dtype=torch.float64)
        K = K.to(W.device)
        lam = damping * float(torch.diagonal(H).mean())
        H_KK = H[K][:, K] + lam * torch.eye(len(K), dtype=torch.float64, device=W.device)
        rhs = W @ H[:, K] + lam * W[:, K]
        where = f"the projection [{d_out} x {d_in}] keeping {len(K)} columns"
        L = _cholesky(H_KK, f"cannot refit {where}: H[K,K] + damping", damping)
        new_K = torch.cholesky_solve(rhs.T, L).T

        repaired = torch.zeros_like(W)
        repaired[:, K] = new_K
        cut = torch.zeros_like(W)
        cut[:, K] = W[:, K]
        dense = float(torch.einsum("ij,jk,ik->", W, H, W))
        errors = ReconstructionError(_relative(W - cut, H, dense), _relative(W - repaired, H, dense))

        new_bias = bias
        if mean is not None:
            mu = mean.detach().to(device=W.device, dtype=torch.float64)
            b = torch.zeros(d_out, dtype=torch.float64, device=W.device)
            if bias is not None:
                b = bias.detach().to(device=W.device, dtype=torch.float64)
            out_dtype = bias.dtype if bias is not None else weight.dtype
            new_bias = (b + W @ mu - new_K @ mu[K]).to(out_dtype)
    return new_K.to(weight.dtype), new_bias, errors


class ObsGreedy(NamedTuple):
    """What :func:`obs_greedy` did: the removals, their costs and the steps that made them.

    Attributes:
        order: ``[remove]`` int64, the removed group indices (rows of ``groups``) in removal order; groups
            removed in one step come in the order of their scores at that step.
        increase: ``[remove]`` float64, each removed group's error increase *as a single removal* at its step,
            ``tr(W_g (G_gg)^-1 W_g^T)`` on that step's ``W`` and ``G``. Exact (the measured increase) when
            its step removed one group; with several, the step's estimate of each one's share.
        weight: ``[d_out, d_in]`` updated weight in the input weight's dtype, the removed columns exactly
            zero.
        steps: ``[n_steps]`` int64, how many groups each step removed (sums to ``remove``).
        joint: ``[n_steps]`` float64, each step's exact error increase for the set ``S`` it removed,
            ``tr(W_S (G_SS)^-1 W_S^T)``; these sum to ``tr((W - W') (H + lam I) (W - W')^T)``.
    """

    order: Tensor
    increase: Tensor
    weight: Tensor
    steps: Tensor
    joint: Tensor


def obs_greedy(
    weight: Tensor,
    hessian: Tensor,
    groups: Tensor,
    remove: int,
    damping: float = 0.01,
    batch_fraction: float = 0.0,
) -> ObsGreedy:
    """Remove ``remove`` column groups greedily by grouped OBS (ZipLM), one group or a batch per step.

    Each step scores every live group ``g`` by the exact error increase of removing it alone and
    re-optimising all other live columns, ``tr(W_g (G_gg)^-1 W_g^T)`` with ``G = (H + lam I)^-1`` of the
    columns still live. With ``batch_fraction`` 0 (the default), or whenever ``batch_fraction * live < 2``,
    the step removes the cheapest group, applies the OBS update ``W -= W_g (G_gg)^-1 G_{g,:}`` (which zeroes
    the group's columns) and downdates ``G`` by the Schur complement ``G -= G_{:,g} (G_gg)^-1 G_{g,:}``,
    which is the inverse of the damped ``H`` restricted to the remaining columns without a fresh inversion:
    ZipLM's exact greedy. Otherwise it removes the ``k = floor(batch_fraction * live)`` cheapest groups at
    once, as a set ``S`` of ``k * g`` columns, with one joint update ``W -= W_S (G_SS)^-1 G_{S,:}``,
    ``G -= G_{:,S} (G_SS)^-1 G_{S,:}``: fewer steps (a 7B down_proj: 11008 one at a time, 426 at 1/64),
    each a matrix product instead of a rank-``g`` update. The set update is exact (the weights and the
    joint increase are those of removing ``S`` and refitting the rest); what batching changes is *which*
    groups go (the ``k`` best single removals, not ``k`` greedy steps) and the per-group increases, which
    are the single-removal estimates at the step, not each one's exact share. Removed diagonal blocks are
    reset to the identity so that every block stays factorisable; a block whose Cholesky fails
    (ill-conditioned) is inverted by ``pinv`` instead, as ZipLM does.

    The error is measured with the *damped* ``H``: ``joint`` sums to ``tr((W - W') (H + lam I)
    (W - W')^T)`` for the returned ``W'`` (so does ``increase`` one at a time), and ``W'`` restricted to the
    kept columns equals :func:`lsq_refit` of those columns with the same ``damping``, batched or not.
    Columns in no group are never removed but are updated. Cost per step: ``O(n_groups g^3 + d_out n_groups
    g^2 + k g d_in^2 + (k g)^3)`` for group size ``g``.

    Args:
        weight: ``[d_out, d_in]`` dense weight, any float dtype. Not modified.
        hessian: ``[d_in, d_in]`` second moment (or covariance) of the inputs, undamped.
        groups: ``[n_groups, group_size]`` integer tensor of column ids, all distinct. For GQA attention a
            group is every o_proj column of the query heads that share one key/value head.
        remove: how many groups to remove, ``0 <= remove <= n_groups``.
        damping: ``lam = damping * mean(diag(H))`` is added to the diagonal; ``>= 0``.
        batch_fraction: the share of the live groups removed per step, in ``[0, 1]`` (at least one group
            per step); 0 is the exact one-at-a-time greedy, bit for bit.
    """
    result = _greedy_obs(weight, hessian, groups, remove, damping, batch_fraction)
    return result._replace(weight=result.weight.to(weight.dtype))


def obs_group_scores(
    weight: Tensor, hessian: Tensor, groups: Tensor, damping: float = 0.01, batch_fraction: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Every group's place in the full greedy OBS order and its error increase, for use as a ranking score.

    Runs :func:`obs_greedy` until all groups but one are removed. Returns ``(position, increase)``, each
    ``[n_groups]``: ``position[g]`` is the place at which group ``g`` was removed (0 first; the one survivor
    gets ``n_groups - 1``; groups removed in one batched step get consecutive places in the order of their
    scores) and ``increase[g]`` its error increase at its step (float64; with ``batch_fraction`` the
    step's single-removal estimate). The survivor is never removed and gets ``+inf``, so it ranks as the
    most important. The increases are not monotone along the order (a later step can cost less than an
    earlier one, since earlier removals changed the weights): ``position`` is the greedy's ranking,
    ``increase`` a score in error units.
    """
    _, d_in = _check_weight_hessian(weight, hessian, "obs_group_scores")
    n_groups = _check_groups(groups, d_in)
    order, increase, *_ = _greedy_obs(weight, hessian, groups, n_groups - 1, damping, batch_fraction)
    position = torch.full((n_groups,), n_groups - 1, dtype=torch.int64)
    position[order] = torch.arange(n_groups - 1, dtype=torch.int64)
    scores = torch.full((n_groups,), float("inf"), dtype=torch.float64)
    scores[order] = increase
    return position, scores


def linear_map(sum_xx: Tensor, sum_xy: Tensor, damping: float = 0.0) -> Tensor:
    """ReplaceMe's training-free map: the least-squares ``T`` with ``Y ~ X T`` over calibration tokens.

    ``T = (X^T X + lam I)^-1 X^T Y`` from the accumulated ``sum_xx = X^T X`` ``[d_in, d_in]`` and
    ``sum_xy = X^T Y`` ``[d_in, d_out]`` (rows of ``X``, ``Y`` are tokens), with ``lam = damping *
    mean(diag(X^T X))``. ReplaceMe's default is no damping, which is fine in float64 when there are many
    more tokens than features. Returned in float64; fold it with :func:`fold_linear_map`.

    Raises:
        ConfigError: shapes do not fit, ``damping < 0``, or ``X^T X + lam I`` is singular (the message
            suggests a damping).
    """
    if sum_xx.ndim != 2 or sum_xx.shape[0] != sum_xx.shape[1]:
        raise ConfigError(f"sum_xx must be a square [d, d] matrix, got shape {tuple(sum_xx.shape)}")
    if sum_xy.ndim != 2 or sum_xy.shape[0] != sum_xx.shape[0]:
        raise ConfigError(
            f"sum_xy shape {tuple(sum_xy.shape)} does not match sum_xx {tuple(sum_xx.shape)}; "
            f"expected ({sum_xx.shape[0]}, d_out)"
        )
    _check_damping(damping)
    with torch.no_grad():
        A = sum_xx.detach().to(torch.float64)
        A = (A + A.T) / 2
        B = sum_xy.detach().to(device=A.device, dtype=torch.float64)
        lam = damping * float(torch.diagonal(A).mean())
        A = A + lam * torch.eye(A.shape[0], dtype=torch.float64, device=A.device)
        L = _cholesky(A, f"cannot fit the linear map [{A.shape[0]} x {B.shape[1]}]: X^T X + damping", damping)
        return torch.cholesky_solve(B, L)


def fold_linear_map(
    down_proj_weight: Tensor, T: Tensor, bias: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Fold ``T`` into the down projection whose output it maps: ``W' = T^T W``, ``b' = T^T b``.

    The projection outputs rows ``m = a W^T (+ b)``; the map's ``m T = a (T^T W)^T (+ T^T b)``, so the
    composition is exact and adds no parameter. ``T`` must be square in practice (``[d, d]``, the residual
    width) for the layer to keep its shape, but any ``[d_out, d_new]`` works. Returns ``(W', b')`` in the
    dtypes of ``down_proj_weight`` and ``bias``; ``b'`` is ``None`` without a bias.
    """
    if down_proj_weight.ndim != 2 or T.ndim != 2 or T.shape[0] != down_proj_weight.shape[0]:
        raise ConfigError(
            f"the map T {tuple(T.shape)} does not fit the down projection {tuple(down_proj_weight.shape)}; "
            f"expected T of shape ({down_proj_weight.shape[0] if down_proj_weight.ndim else '?'}, d)"
        )
    if bias is not None and bias.shape != (down_proj_weight.shape[0],):
        raise ConfigError(f"bias shape {tuple(bias.shape)} does not match {tuple(down_proj_weight.shape)}")
    with torch.no_grad():
        T64 = T.detach().to(device=down_proj_weight.device, dtype=torch.float64)
        W = (T64.T @ down_proj_weight.detach().to(torch.float64)).to(down_proj_weight.dtype)
        b = None
        if bias is not None:
            b = (T64.T @ bias.detach().to(device=T64.device, dtype=torch.float64)).to(bias.dtype)
    return W, b


def _greedy_obs(
    weight: Tensor, hessian: Tensor, groups: Tensor, remove: int, damping: float, batch_fraction: float
) -> ObsGreedy:
    """The greedy of :func:`obs_greedy`, returning the weight in float64."""
    d_out, d_in = _check_weight_hessian(weight, hessian, "obs_greedy")
    n_groups = _check_groups(groups, d_in)
    _check_damping(damping)
    _check_batch_fraction(batch_fraction)
    if not isinstance(remove, int) or isinstance(remove, bool) or not 0 <= remove <= n_groups:
        raise ConfigError(
            f"remove must be an integer in [0, {n_groups}] (the number of groups), got {remove!r}"
        )

    with torch.no_grad():
        W = weight.detach().to(dtype=torch.float64, copy=True)
        H = hessian.detach().to(device=W.device, dtype=torch.float64)
        idx = groups.to(device=W.device, dtype=torch.int64)
        size = idx.shape[1]
        eye = torch.eye(size, dtype=torch.float64, device=W.device)
        lam = damping * float(torch.diagonal(H).mean())
        Hd = H + lam * torch.eye(d_in, dtype=torch.float64, device=W.device)
        where = f"the projection [{d_out} x {d_in}]"
        G = torch.cholesky_inverse(_cholesky(Hd, f"cannot run OBS on {where}: H + damping", damping))

        live = torch.ones(n_groups, dtype=torch.bool, device=W.device)
        order = torch.empty(remove, dtype=torch.int64)
        increase = torch.empty(remove, dtype=torch.float64)
        steps: list[int] = []
        joint: list[float] = []
        done = 0
        while done < remove:
            ids = torch.nonzero(live).flatten()
            cols = idx[ids]  # [live, size]
            blocks = G[cols[:, :, None], cols[:, None, :]]  # G_gg of every live group
            blocks = (blocks + blocks.transpose(1, 2)) / 2
            L, info = torch.linalg.cholesky_ex(blocks)
            inv = torch.cholesky_inverse(L)
            bad = info != 0
            if bool(bad.any()):
                inv[bad] = torch.linalg.pinv(blocks[bad], hermitian=True)
            Wg = W[:, cols].permute(1, 0, 2)  # [live, d_out, size]
            lambd = Wg @ inv  # W_g (G_gg)^-1
            scores = (lambd * Wg).sum(dim=(1, 2))
            k = min(max(1, int(batch_fraction * len(ids))), remove - done)
            if k == 1:  # the exact greedy, one group
                best = int(torch.argmin(scores))
                g = cols[best]
                rows = G[g, :]  # G_{g,:}
                W -= lambd[best] @ rows
                W[:, g] = 0  # exact zeros instead of rounding residue
                G -= rows.T @ (inv[best] @ rows)
                G[g, :] = 0
                G[:, g] = 0
                G[g[:, None], g[None, :]] = eye
                live[ids[best]] = False
                order[done] = int(ids[best])
                increase[done] = float(scores[best])
                joint.append(float(scores[best]))
            else:  # the k cheapest at once, one joint OBS update
                chosen = torch.argsort(scores, stable=True)[:k]
                S = cols[chosen].flatten()  # [k * size] columns
                block = G[S[:, None], S[None, :]]  # G_SS
                block = (block + block.T) / 2
                L, info = torch.linalg.cholesky_ex(block)
                if int(info) == 0:
                    inv_S = torch.cholesky_inverse(L)
                else:  # an ill-conditioned set: pinv, as for a bad group block
                    inv_S = torch.linalg.pinv(block, hermitian=True)
                W_S = W[:, S]
                lambd_S = W_S @ inv_S  # W_S (G_SS)^-1
                rows = G[S, :]  # G_{S,:}
                W -= lambd_S @ rows
                W[:, S] = 0
                G -= rows.T @ (inv_S @ rows)
                G[S, :] = 0
                G[:, S] = 0
                G[S[:, None], S[None, :]] = torch.eye(len(S), dtype=torch.float64, device=W.device)
                live[ids[chosen]] = False
                order[done : done + k] = ids[chosen].cpu()
                increase[done : done + k] = scores[chosen].cpu()
                joint.append(float((lambd_S * W_S).sum()))
            steps.append(k)
            done += k
    return ObsGreedy(
        order, increase, W, torch.tensor(steps, dtype=torch.int64), torch.tensor(joint, dtype=torch.float64)
    )


def _cholesky(A: Tensor, what: str, damping: float) -> Tensor:
    """Lower Cholesky factor of ``A``, or a one-line ConfigError that suggests raising the damping."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        suggestion = 0.01 if damping < 0.01 else damping * 10
        raise ConfigError(
            f"{what} is singular or not positive definite (Cholesky failed at column {int(info) - 1}); "
            f"raise the reconstruction damping (now {damping}), e.g. to {suggestion:g}"
        )
    return L


def _relative(delta: Tensor, H: Tensor, dense: float) -> float:
    """``tr(delta H delta^T) / dense``; 0 for no error, ``inf`` for an error on a dense output of none."""
    error = float(torch.einsum("ij,jk,ik->", delta, H, delta))
    if dense > 0:
        return error / dense
    return 0.0 if error <= 0 else float("inf")


def _check_weight_hessian(weight: Tensor, hessian: Tensor, caller: str) -> tuple[int, int]:
    if weight.ndim != 2:
        raise ConfigError(f"{caller}: weight must be 2-D [d_out, d_in], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ConfigError(f"{caller}: weight must be a float tensor, got {weight.dtype}")
    d_out, d_in = weight.shape
    if hessian.shape != (d_in, d_in):
        raise ConfigError(
            f"{caller}: hessian shape {tuple(hessian.shape)} does not match weight {tuple(weight.shape)}; "
            f"expected ({d_in}, {d_in})"
        )
    if not bool(torch.isfinite(hessian).all()):
        raise ConfigError(f"{caller}: hessian has NaN or infinite entries; check the calibration activations")
    return d_out, d_in


def _check_keep(keep: Tensor, d_in: int) -> Tensor:
    if keep.ndim != 1 or keep.dtype.is_floating_point or keep.dtype == torch.bool or len(keep) == 0:
        raise ConfigError(
            f"keep must be a non-empty 1-D integer tensor of column ids, got {keep.dtype} {tuple(keep.shape)}"
        )
    K = keep.to(torch.int64)
    if int(K.min()) < 0 or int(K.max()) >= d_in:
        raise ConfigError(f"keep has column ids outside [0, {d_in})")
    if len(torch.unique(K)) != len(K):
        raise ConfigError("keep has repeated column ids")
    return K


def _check_groups(groups: Tensor, d_in: int) -> int:
    if (
        groups.ndim != 2
        or groups.dtype.is_floating_point
        or groups.dtype == torch.bool
        or groups.numel() == 0
    ):
        raise ConfigError(
            f"groups must be a non-empty [n_groups, group_size] integer tensor of column ids, got "
            f"{groups.dtype} {tuple(groups.shape)}"
        )
    if int(groups.min()) < 0 or int(groups.max()) >= d_in:
        raise ConfigError(f"groups has column ids outside [0, {d_in})")
    if len(torch.unique(groups)) != groups.numel():
        raise ConfigError("groups share column ids; every column may belong to one group at most")
    return groups.shape[0]


def _check_batch_fraction(batch_fraction: float) -> None:
    if (
        isinstance(batch_fraction, bool)
        or not isinstance(batch_fraction, (int, float))
        or not 0 <= batch_fraction <= 1
    ):
        raise ConfigError(
            "the OBS batch fraction must be a number in [0, 1] (the share of the live groups removed per "
            f"greedy step; 0: one at a time), got {batch_fraction!r}"
        )


def _check_damping(damping: float) -> None:
    if not damping >= 0 or damping == float("inf"):
        raise ConfigError(f"reconstruction damping must be a finite number >= 0, got {damping}")
