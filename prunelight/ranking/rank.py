"""The ranking stage: a :class:`GroupTable` and a :class:`RankingConfig` in, a :class:`PruningPlan` out.

Pure tensor code (no model, no Lightning), in the order of docs/design.md "Ranking and its corrections":
raw -> clip + normalise -> block correction (T) -> layer correction (tau) -> depth weight -> allocation.
Every stage's per-layer statistics are kept in :attr:`RankingResult.stages` so a report can show why a
layer lost what it lost.

Target and kinds. The target is ``ratio`` of the prunable parameters (``ratio_of="prunable"``) or of all
parameters (``"all"``). Whole layers removed by ``remove_layers`` count first; the rest is split over the
pruned ``kinds`` in proportion to their prunable parameters in the kept layers, and each kind is ranked
only among itself. Every pruned kind so loses the same fraction of its own parameters; with both kinds,
``ratio_of="prunable"`` and no removed layers that fraction is ``ratio`` itself, and the total target is
met in all cases. Ranking kinds separately avoids comparing attention-group scores with MLP-channel scores,
which live on unrelated scales; the price is that each kind must reach its share on its own (a kind whose
constraints cannot is an error, not silently made up for by the other).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from prunelight.errors import ConfigError
from prunelight.ranking.allocation import (
    Constraints,
    align_kept,
    allocate_global,
    allocate_uniform,
    check_forced,
    check_limits,
    unreachable_message,
)
from prunelight.ranking.corrections import (
    adaptive_tau,
    block_weights,
    depth_factors,
    layer_correction,
    layer_means,
    scale_layers,
)
from prunelight.ranking.normalize import NORMALIZATIONS, clip_percentiles, normalize
from prunelight.ranking.plan import LayerPlan, PruningPlan
from prunelight.ranking.search import plan_counts
from prunelight.ranking.table import KINDS, GroupTable

STAGES = ("raw", "normalized", "block", "layer", "depth")


@dataclass
class RankingConfig:
    """How group scores become a plan. See the module docstring for how the target is split over kinds.

    Attributes:
        ratio: fraction of parameters to remove, in [0, 1).
        ratio_of: ``"prunable"`` (attention groups and MLP channels, ``GroupTable.prunable_params()``) or
            ``"all"`` (``GroupTable.total_params``, embeddings included).
        allocation: ``"global"`` ranks all groups of a kind across layers; ``"search"`` starts there and
            searches the per-layer amounts on the model's own outputs (the ``search`` section; the prune
            stage runs it, :mod:`prunelight.calibration.search_fitness`); ``"uniform"`` removes the same
            fraction from every layer.
        kinds: the kinds that are pruned, each ranked among itself and reaching its share of the target.
        normalization: per layer and kind, see :mod:`prunelight.ranking.normalize`.
        clip_percentiles: e.g. ``(5, 95)``: clip each layer's scores to these percentiles before normalising.
        temperature: T >= 0 of the block correction; T > 0 needs ``GroupTable.block_importance``.
        tau: layer correction exponent >= 0; None picks it per kind (``adaptive_tau_factor``).
        adaptive_tau_factor: the largest ratio of layer means the adaptive tau leaves (>= 1).
        depth_weight: >= 0; the first layer's scores are multiplied by ``1 + depth_weight``, the last by 1.
        min_rate: fraction of groups every layer and kind loses at least.
        max_rate: fraction of groups every layer and kind loses at most (one group always stays).
        first_layers: the first k layers get ``first_layers_max_rate`` as a tighter max rate.
        first_layers_max_rate: see ``first_layers``.
        protected_layers: never pruned; negative indices count from the end.
        remove_layers: whole decoder layers to drop, those of lowest block importance that are not
            protected; their parameters count towards the target.
        mlp_multiple: keep each pruned layer's MLP channels a multiple of this (64 or 128 make the pruned
            GEMMs as fast as aligned ones on GPUs; docs/performance.md); 1 is off. The target is then met
            up to half a multiple of channels per layer.
    """

    ratio: float = 0.2
    ratio_of: Literal["prunable", "all"] = "prunable"
    allocation: Literal["global", "uniform", "search"] = "global"
    kinds: tuple[str, ...] = ("attention", "mlp")
    normalization: Literal["none", "minmax", "zscore", "log", "sqrt"] = "none"
    clip_percentiles: tuple[float, float] | None = None
    temperature: float = 0.0
    tau: float | None = 0.0
    adaptive_tau_factor: float = 10.0
    depth_weight: float = 0.0
    min_rate: float = 0.0
    max_rate: float = 1.0
    first_layers: int = 0
    first_layers_max_rate: float | None = None
    protected_layers: list[int] = field(default_factory=list)
    remove_layers: int = 0
    mlp_multiple: int = 1

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        self.protected_layers = [int(i) for i in self.protected_layers]
        if self.clip_percentiles is not None:
            self.clip_percentiles = tuple(float(p) for p in self.clip_percentiles)  # type: ignore[assignment]
        self._check()

    def _check(self) -> None:
        """Checks that need no table; the table-dependent ones run in :func:`rank`."""
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.ratio_of not in ("prunable", "all"):
            raise ConfigError(f"ratio_of must be 'prunable' or 'all', got {self.ratio_of!r}")
        if self.allocation not in ("global", "uniform", "search"):
            raise ConfigError(f"allocation must be 'global', 'uniform' or 'search', got {self.allocation!r}")
        if self.allocation == "search" and self.mlp_multiple > 1:
            raise ConfigError(
                "allocation 'search' picks ladder levels; set mlp_multiple: 1 (the levels set widths)"
            )
        if (
            not self.kinds
            or any(k not in KINDS for k in self.kinds)
            or len(set(self.kinds)) != len(self.kinds)
        ):
            raise ConfigError(f"kinds must be distinct names from {KINDS}, at least one, got {self.kinds}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.clip_percentiles is not None:
            if len(self.clip_percentiles) != 2:
                raise ConfigError(
                    f"clip_percentiles must be two numbers (low, high), got {self.clip_percentiles}"
                )
            low, high = self.clip_percentiles
            if not 0.0 <= low < high <= 100.0:
                raise ConfigError(
                    f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}"
                )
        if not self.temperature >= 0 or math.isinf(self.temperature):
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.tau is not None and (not self.tau >= 0 or math.isinf(self.tau)):
            raise ConfigError(f"tau must be a finite number >= 0, or None for adaptive, got {self.tau}")
        if not self.adaptive_tau_factor >= 1:
            raise ConfigError(f"adaptive_tau_factor must be >= 1, got {self.adaptive_tau_factor}")
        if not self.depth_weight >= 0:
            raise ConfigError(f"depth_weight must be >= 0, got {self.depth_weight}")
        for name in ("min_rate", "max_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_rate > self.max_rate:
            raise ConfigError(f"min_rate={self.min_rate} is above max_rate={self.max_rate}")
        if self.first_layers < 0:
            raise ConfigError(f"first_layers must be >= 0, got {self.first_layers}")
        if self.first_layers_max_rate is not None and not 0.0 <= self.first_layers_max_rate <= 1.0:
            raise ConfigError(f"first_layers_max_rate must be in [0, 1], got {self.first_layers_max_rate}")
        if self.first_layers > 0 and self.first_layers_max_rate is None:
            raise ConfigError(
                f"first_layers={self.first_layers} needs first_layers_max_rate (their max rate)"
            )
        if self.remove_layers < 0:
            raise ConfigError(f"remove_layers must be >= 0, got {self.remove_layers}")
        if self.mlp_multiple < 1:
            raise ConfigError(f"mlp_multiple must be >= 1 (1 = off), got {self.mlp_multiple}")


@dataclass
class RankingResult:
    """The plan and everything a report needs to explain it.

    ``stages`` (JSON-able): ``base_params``, ``target_params``, ``removed_layer_params``,
    ``removed_params``; ``layers``: per layer lists ``block_importance``, ``block_weight``,
    ``depth_factor``, ``protected``, ``removed`` (whole layer) and ``params_removed``; and one entry per
    pruned kind with ``target_params`` (its share), ``removed_params``, ``tau``, for each stage in
    :data:`STAGES` per layer lists ``mean``, ``std``, ``min``, ``max``, and ``allocation``: per layer lists
    ``groups_before``, ``groups_after``, ``rate`` (fraction of groups removed), ``params_removed``,
    ``min_groups`` and ``max_groups`` (the constraint limits). A removed layer shows all its groups gone.
    """

    plan: PruningPlan
    stages: dict[str, Any]
    tau: dict[str, float]
    target_params: int
    removed_params: int

    def replanned(self, plan: PruningPlan, table: GroupTable) -> RankingResult:
        """The same result with another plan of the same kinds (the allocation search's): the per-layer
        allocation entries and the removed parameters follow the new plan; the stages' scores stay."""
        stages = {
            key: (dict(value) if isinstance(value, dict) else value) for key, value in self.stages.items()
        }
        removed_layers = {p.layer for p in plan.layers if p.remove_layer}
        removed_params = sum(table.layer_params[layer] for layer in removed_layers)
        per_layer = [
            table.layer_params[layer] if layer in removed_layers else 0 for layer in range(table.num_layers)
        ]
        for kind in KINDS:
            if kind not in stages:
                continue
            allocation = dict(stages[kind]["allocation"])
            sizes, params = allocation["groups_before"], table.group_params(kind)
            planned = plan_counts(plan, kind)
            counts = [n if layer in removed_layers else planned[layer] for layer, n in enumerate(sizes)]
            allocation.update(_removed_counts(sizes, counts, params))
            kind_removed = sum(c * p for layer, (c, p) in enumerate(zip(counts, params, strict=True))
                               if layer not in removed_layers)  # fmt: skip
            stages[kind] = {**stages[kind], "allocation": allocation, "removed_params": kind_removed}
            removed_params += kind_removed
            for layer in range(table.num_layers):
                if layer not in removed_layers:
                    per_layer[layer] += allocation["params_removed"][layer]
        stages["layers"] = {**stages["layers"], "params_removed": per_layer}
        stages["removed_params"] = removed_params
        return RankingResult(plan, stages, dict(self.tau), self.target_params, removed_params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "stages": self.stages,
            "tau": dict(self.tau),
            "target_params": self.target_params,
            "removed_params": self.removed_params,
        }


def _removed_counts(sizes: list[int], counts: list[int], params: list[int]) -> dict[str, list]:
    """The allocation entries of ``counts`` groups removed per layer (of ``sizes``, ``params`` each)."""
    return {
        "groups_after": [n - c for n, c in zip(sizes, counts, strict=True)],
        "rate": [c / n if n else 0.0 for n, c in zip(sizes, counts, strict=True)],
        "params_removed": [c * p for c, p in zip(counts, params, strict=True)],
    }


def _stats(scores: list[torch.Tensor]) -> dict[str, list[float | None]]:
    """Per layer mean, std (population, so one group gives 0, not NaN), min and max; None for no groups."""
    out: dict[str, list[float | None]] = {"mean": [], "std": [], "min": [], "max": []}
    for s in scores:
        empty = s.numel() == 0
        out["mean"].append(None if empty else float(s.mean()))
        out["std"].append(None if empty else float(s.std(unbiased=False)))
        out["min"].append(None if empty else float(s.min()))
        out["max"].append(None if empty else float(s.max()))
    return out


def _check_table(table: GroupTable, config: RankingConfig) -> None:
    n = table.num_layers
    lengths = {
        "mlp": len(table.mlp),
        "attention_group_params": len(table.attention_group_params),
        "mlp_channel_params": len(table.mlp_channel_params),
        "layer_params": len(table.layer_params),
    }
    bad = {k: v for k, v in lengths.items() if v != n}
    if n == 0 or bad:
        raise ValueError(f"GroupTable has {n} layers of attention scores but {bad}")
    for kind in config.kinds:
        for layer, s in enumerate(table.scores(kind)):
            if s.dim() != 1:
                raise ValueError(f"{kind} scores of layer {layer} must be 1-d, got shape {tuple(s.shape)}")
            if s.numel() and (not torch.isfinite(s).all() or (s < 0).any()):
                raise ConfigError(
                    f"{kind} scores of layer {layer} must be finite and >= 0 (the criterion produced "
                    f"negative or non-finite values); rank absolute values or check the criterion"
                )
    needs_b = [
        name
        for name, on in (("temperature", config.temperature > 0), ("remove_layers", config.remove_layers > 0))
        if on
    ]
    if needs_b:
        what = " and ".join(f"{name}={getattr(config, name)}" for name in needs_b)
        if table.block_importance is None:
            raise ConfigError(
                f"{what} needs the block importance of every layer (GroupTable.block_importance), which was "
                f"not measured; measure block importance (block influence) or set "
                + " and ".join(f"{name}=0" for name in needs_b)
            )
        b = table.block_importance
        if b.shape != (n,):
            raise ValueError(f"block_importance must have shape ({n},), got {tuple(b.shape)}")
        if not torch.isfinite(b).all() or (b < 0).any() or (config.temperature > 0 and not b.sum() > 0):
            raise ConfigError(f"block importance must be finite, >= 0 and not all 0, got {b.tolist()}")


def _resolve_layers(indices: list[int], num_layers: int) -> frozenset[int]:
    out = set()
    for i in indices:
        if not -num_layers <= i < num_layers:
            raise ConfigError(f"protected_layers has {i}, but the model has {num_layers} layers")
        out.add(i % num_layers)
    return frozenset(out)


def layer_constraints(
    config: RankingConfig, num_layers: int, removed: frozenset[int] = frozenset()
) -> Constraints:
    """The per-layer limits of ``config`` for a model of ``num_layers`` layers (sparse pruning uses them as
    bounds of each layer's sparsity)."""
    if config.first_layers > num_layers:
        raise ConfigError(f"first_layers={config.first_layers}, but the model has {num_layers} layers")
    return Constraints(
        min_rate=config.min_rate,
        max_rate=config.max_rate,
        first_layers=config.first_layers,
        first_layers_max_rate=config.first_layers_max_rate,
        protected=_resolve_layers(config.protected_layers, num_layers),
        removed=removed,
    )


def _layers_to_remove(table: GroupTable, config: RankingConfig, protected: frozenset[int]) -> frozenset[int]:
    """The ``remove_layers`` unprotected layers of lowest block importance (ties: lower index first)."""
    if config.remove_layers == 0:
        return frozenset()
    n = table.num_layers
    candidates = [layer for layer in range(n) if layer not in protected]
    if config.remove_layers > len(candidates) or config.remove_layers >= n:
        raise ConfigError(
            f"remove_layers={config.remove_layers}, but only {min(len(candidates), n - 1)} of the {n} layers "
            f"can go (at least one stays, protected_layers={sorted(protected)} never go); lower remove_layers"
        )
    assert table.block_importance is not None
    b = table.block_importance.to(torch.float64).tolist()
    return frozenset(sorted(candidates, key=lambda layer: (b[layer], layer))[: config.remove_layers])


def rank(table: GroupTable, config: RankingConfig) -> RankingResult:
    """Rank the groups of ``table`` and decide what goes (see the module docstring and docs/design.md)."""
    config._check()
    _check_table(table, config)
    n_layers = table.num_layers
    protected = layer_constraints(config, n_layers).protected
    removed_layers = _layers_to_remove(table, config, protected)
    constraints = layer_constraints(config, n_layers, removed_layers)

    # The target, then each kind's share of what layer removal leaves.
    base = table.prunable_params() if config.ratio_of == "prunable" else table.total_params
    target = int(round(config.ratio * base))
    removed_layer_params = sum(table.layer_params[layer] for layer in removed_layers)
    rest = max(0, target - removed_layer_params)
    kept = [layer for layer in range(n_layers) if layer not in removed_layers]
    kind_params = {
        kind: sum(table.scores(kind)[layer].numel() * table.group_params(kind)[layer] for layer in kept)
        for kind in config.kinds
    }
    selected = sum(kind_params.values())
    if rest > 0 and rest >= selected:
        raise ConfigError(
            f"ratio={config.ratio} of {config.ratio_of} parameters ({base:,}) asks for {target:,} parameters"
            + (f", {rest:,} after removing layers {sorted(removed_layers)}" if removed_layers else "")
            + f", but the prunable {'/'.join(config.kinds)} parameters are only {selected:,}; lower ratio"
            + (" or use ratio_of='prunable'" if config.ratio_of == "all" else "")
        )
    shares = {kind: (rest * kind_params[kind] / selected if selected else 0.0) for kind in config.kinds}

    weights = block_weights(table.block_importance, config.temperature, n_layers)
    depth = depth_factors(n_layers, config.depth_weight)
    stages: dict[str, Any] = {
        "base_params": base,
        "target_params": target,
        "removed_layer_params": removed_layer_params,
    }
    taus: dict[str, float] = {}
    removed: dict[str, list[torch.Tensor]] = {}
    for kind in config.kinds:
        sizes = [s.numel() for s in table.scores(kind)]
        params = list(table.group_params(kind))
        min_counts, max_counts = constraints.min_counts(sizes), constraints.max_counts(sizes)
        check_limits(kind, sizes, constraints)
        check_forced(kind, sizes, params, constraints, shares[kind])
        if constraints.capacity(sizes, params) < shares[kind]:
            raise ConfigError(unreachable_message(kind, sizes, params, constraints, shares[kind]))

        scores: dict[str, list[torch.Tensor]] = {
            "raw": [s.detach().to("cpu", torch.float64) for s in table.scores(kind)]
        }
        current = scores["raw"]
        if config.clip_percentiles is not None:
            current = [clip_percentiles(s, *config.clip_percentiles) for s in current]
        scores["normalized"] = normalize(current, config.normalization)
        scores["block"] = scale_layers(scores["normalized"], weights)
        if config.tau is None:
            # Only layers that can lose groups of this kind compete, so only their spread matters.
            competing = torch.tensor([c > 0 for c in max_counts], dtype=torch.bool)
            taus[kind] = adaptive_tau(layer_means(scores["block"])[competing], config.adaptive_tau_factor)
        else:
            taus[kind] = float(config.tau)
        scores["layer"] = layer_correction(scores["block"], taus[kind])
        scores["depth"] = scale_layers(scores["layer"], depth)

        allocate = allocate_uniform if config.allocation == "uniform" else allocate_global  # search: its seed
        removed[kind] = allocate(scores["depth"], params, min_counts, max_counts, shares[kind])
        if kind == "mlp":
            removed[kind] = align_kept(
                scores["depth"], removed[kind], min_counts, max_counts, config.mlp_multiple
            )
        counts = [
            n if layer in removed_layers else r.numel()
            for layer, (n, r) in enumerate(zip(sizes, removed[kind], strict=True))
        ]
        stages[kind] = {
            "target_params": shares[kind],
            "removed_params": sum(r.numel() * p for r, p in zip(removed[kind], params, strict=True)),
            "tau": taus[kind],
            **{stage: _stats(scores[stage]) for stage in STAGES},
            "allocation": {
                "groups_before": sizes,
                **_removed_counts(sizes, counts, params),
                "min_groups": min_counts,
                "max_groups": max_counts,
            },
        }

    plan = PruningPlan(
        [
            LayerPlan(
                layer=layer,
                attention_groups=removed["attention"][layer].tolist() if "attention" in removed else [],
                mlp_channels=removed["mlp"][layer].tolist() if "mlp" in removed else [],
                remove_layer=layer in removed_layers,
            )
            for layer in range(n_layers)
        ]
    )
    per_layer = [
        table.layer_params[layer]
        if layer in removed_layers
        else sum(stages[kind]["allocation"]["params_removed"][layer] for kind in config.kinds)
        for layer in range(n_layers)
    ]
    b = table.block_importance
    stages["layers"] = {
        "block_importance": None if b is None else [float(x) for x in b.to(torch.float64)],
        "block_weight": [float(w) for w in weights],
        "depth_factor": [float(d) for d in depth],
        "protected": [layer in protected for layer in range(n_layers)],
        "removed": [layer in removed_layers for layer in range(n_layers)],
        "params_removed": per_layer,
    }
    removed_params = removed_layer_params + sum(stages[kind]["removed_params"] for kind in config.kinds)
    stages["removed_params"] = removed_params
    return RankingResult(
        plan=plan, stages=stages, tau=taus, target_params=target, removed_params=removed_params
    )


__all__ = ["STAGES", "RankingConfig", "RankingResult", "rank"]
