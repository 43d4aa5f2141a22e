"""``analysis/gradient_diagnosis.json``: what went wrong in a pruning run, with the numbers and a fix.

Each check reads the run's JSON only (``gradient_statistics.json``, ``layer_report.json``, the settings in
``prune.json``), so ``prunelight report`` reproduces the diagnosis of a finished run exactly. A check that
finds nothing is recorded as passed; one that cannot run (no gradients for a forward criterion) as
skipped; "no issue found" is an explicit outcome, not an empty file.
"""

from __future__ import annotations

import math
import statistics as stats
from dataclasses import asdict, dataclass
from typing import Any

from prunelight.diagnostics.statistics import series
from prunelight.importance.gradients import KINDS

SCHEMA_ID = "prunelight/gradient_diagnosis/1"


@dataclass
class DiagnosisSettings:
    """Thresholds of the diagnosis (docs/design.md: Diagnostics).

    Attributes:
        scale_spread: largest / smallest per-layer mean score (or gradient norm) above which the layers'
            scales are said to differ too much to be ranked together without a layer correction (tau).
        over_pruned_rate: a layer that loses at least this fraction of a kind's groups is heavily pruned.
        many_layers_fraction: "many layers" means at least this fraction of all layers (and at least 2).
        early_layers: how many first layers count as early (None: the first quarter, at least 1).
        early_rate_factor: an early layer is over-pruned when its rate exceeds this multiple of the kind's
            rate over all layers ...
        early_min_rate: ... and is at least this high.
        gradient_range: a layer's gradient norm more than this factor below (above) the median layer's is
            vanishing (exploding).
        gradient_norm_max: a gradient norm above this is exploding whatever the other layers do.
    """

    scale_spread: float = 10.0
    over_pruned_rate: float = 0.7
    many_layers_fraction: float = 0.25
    early_layers: int | None = None
    early_rate_factor: float = 1.5
    early_min_rate: float = 0.3
    gradient_range: float = 1e3
    gradient_norm_max: float = 1e4


def _finite(values: list[float | None]) -> list[tuple[int, float]]:
    return [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]


def _issue(
    issue_id: str,
    severity: str,
    layers: list[int],
    evidence: dict[str, Any],
    message: str,
    recommendation: str,
    kind: str | None = None,
) -> dict[str, Any]:
    return {
        "id": issue_id,
        "severity": severity,
        "kind": kind,
        "layers": layers,
        "evidence": evidence,
        "message": message,
        "recommendation": recommendation,
    }


def _per_layer(layers: list[int], values: list[float | None] | dict[int, float], name: str) -> list[dict]:
    """``[{"layer": i, name: value}]``: JSON objects cannot have integer keys, and lists keep the order."""
    return [{"layer": i, name: values[i]} for i in layers]


def _spread(values: list[float | None]) -> tuple[float, int, int] | None:
    """max / min over the positive finite values, with the layers of both ends."""
    positive = [(i, v) for i, v in _finite(values) if v > 0]
    if len(positive) < 2:
        return None
    low, high = min(positive, key=lambda p: p[1]), max(positive, key=lambda p: p[1])
    return high[1] / low[1], low[0], high[0]


def _check_loss(statistics: dict[str, Any], s: DiagnosisSettings) -> list[dict[str, Any]]:
    loss = statistics.get("calibration_loss")
    if loss is None or math.isfinite(loss):
        return []
    return [
        _issue(
            "calibration_loss_not_finite",
            "error",
            [],
            {"calibration_loss": loss},
            f"the mean calibration loss is {loss}: the gradient scores are meaningless",
            "calibrate in bfloat16 or float32 (model.dtype) rather than float16, and check the calibration "
            "corpus for empty or corrupted windows",
        )
    ]


def _check_gradients(statistics: dict[str, Any], s: DiagnosisSettings) -> list[dict[str, Any]]:
    found = []
    for kind in KINDS:
        norms = series(statistics, kind, "gradient", "norm")
        extremes = list(
            zip(
                series(statistics, kind, "gradient", "min"),
                series(statistics, kind, "gradient", "max"),
                strict=True,
            )
        )
        bad = [
            i
            for i, (lo, hi) in enumerate(extremes)
            if lo is not None and not (math.isfinite(lo) and math.isfinite(hi))
        ]
        bad += [i for i, v in enumerate(norms) if v is not None and not math.isfinite(v) and i not in bad]
        if bad:
            found.append(
                _issue(
                    "non_finite_gradients",
                    "error",
                    sorted(bad),
                    {"norm": _per_layer(sorted(bad), norms, "norm")},
                    f"{kind} gradients of {len(bad)} layer(s) contain NaN or inf",
                    "calibrate in bfloat16 or float32 rather than float16 (overflow), or lower the learning "
                    "signal: shorter windows (data.seqlen) or fewer windows per batch (data.batch_size)",
                    kind,
                )
            )
        finite = _finite(norms)
        if not finite:
            continue
        median = stats.median(v for _, v in finite)
        vanishing = [i for i, v in finite if v == 0 or (median > 0 and v < median / s.gradient_range)]
        exploding = [
            i for i, v in finite if v > s.gradient_norm_max or (median > 0 and v > median * s.gradient_range)
        ]
        for issue_id, layers, what, fix in (
            (
                "vanishing_gradients",
                vanishing,
                f"more than {s.gradient_range:g}x below the median layer's ({median:.3g}) or zero",
                "Taylor scores of these layers carry no signal: use a forward criterion (wanda, "
                "fluctuation) or protect them (ranking.protected_layers); check that their weights are "
                "trainable",
            ),
            (
                "exploding_gradients",
                exploding,
                f"more than {s.gradient_range:g}x above the median layer's ({median:.3g}) or above "
                f"{s.gradient_norm_max:g}",
                "rank with a layer correction (ranking.tau: null or 1) so these layers do not dominate, and "
                "calibrate in bfloat16/float32 on text of the model's domain",
            ),
        ):
            if layers:
                found.append(
                    _issue(
                        issue_id,
                        "warning",
                        layers,
                        {"norm": _per_layer(layers, norms, "norm"), "median_norm": median},
                        f"{kind} gradient norm of {len(layers)} layer(s) {what}",
                        fix,
                        kind,
                    )
                )
    return found


def _check_scale_spread(
    statistics: dict[str, Any], layer_report: dict[str, Any], s: DiagnosisSettings
) -> list[dict[str, Any]]:
    found = []
    tau = layer_report.get("tau") or {}
    for kind in KINDS:
        for source, what in (("importance", "mean importance score"), ("gradient", "gradient norm")):
            spread = _spread(series(statistics, kind, source, "mean" if source == "importance" else "norm"))
            if spread is None or spread[0] <= s.scale_spread:
                continue
            ratio, low, high = spread
            # only layers that may lose groups compete (a protected or fully capped layer is never pruned)
            corrected = [
                e[kind]["scores"]["layer"]["mean"] if e[kind]["limits"][1] > 0 else None
                for e in layer_report["layers"]
                if kind in e
            ]
            after = _spread(corrected)
            tau_used = tau.get(kind)
            fixed = after is not None and after[0] <= s.scale_spread * (1 + 1e-9) and (tau_used or 0) > 0
            found.append(
                _issue(
                    "scale_spread",
                    "info" if fixed else "warning",
                    [low, high],
                    {
                        "source": source,
                        "spread": ratio,
                        "smallest_layer": low,
                        "largest_layer": high,
                        "tau_used": tau_used,
                        "spread_after_layer_correction": after[0] if after else None,
                    },
                    f"{kind} {what} differs {ratio:.3g}x between layer {low} and layer {high}"
                    + (
                        f"; the layer correction (tau={tau_used:.3g}) brought it to {after[0]:.3g}x"
                        if fixed
                        else ""
                    ),
                    "nothing to do: the layer correction handled it"
                    if fixed
                    # measured (docs/results.md, T and tau at full size): with 128 x 2048 calibration
                    # tokens the uncorrected ranking often won despite a 13x spread; tau=1 never did
                    else "compare this run's perplexity with a layer correction (ranking.tau: null, "
                    "adaptive) before keeping it: a spread this wide can let the large layers dominate "
                    "the ranking, but the correction costs quality too (tau=1 the most)",
                    kind,
                )
            )
    return found


def _rates(layer_report: dict[str, Any], kind: str) -> list[tuple[int, float]]:
    return [(e["layer"], e[kind]["rate"]) for e in layer_report["layers"] if kind in e]


def _overall_rate(layer_report: dict[str, Any], kind: str) -> float:
    entries = [e[kind] for e in layer_report["layers"] if kind in e]
    before = sum(e["groups_before"] for e in entries)
    return 1 - sum(e["groups_after"] for e in entries) / before if before else 0.0


def _check_over_pruned(layer_report: dict[str, Any], s: DiagnosisSettings) -> list[dict[str, Any]]:
    found = []
    num_layers = len(layer_report["layers"])
    many = max(2, math.ceil(s.many_layers_fraction * num_layers))
    for kind in KINDS:
        heavy = [(i, r) for i, r in _rates(layer_report, kind) if r >= s.over_pruned_rate]
        overall = _overall_rate(layer_report, kind)
        if len(heavy) < many:
            continue
        found.append(
            _issue(
                "many_layers_over_pruned",
                "warning",
                [i for i, _ in heavy],
                {
                    "rates": _per_layer([i for i, _ in heavy], dict(heavy), "rate"),
                    "threshold": s.over_pruned_rate,
                    "overall_rate": overall,
                },
                f"{len(heavy)} of {num_layers} layers lose at least {s.over_pruned_rate:.0%} of their "
                f"{kind} groups",
                "spread the cut: a block correction (ranking.temperature: 1 or more keeps important "
                f"blocks), a lower ranking.max_rate (e.g. {max(overall * 2, 0.3):.2f}), or uniform "
                "allocation",
                kind,
            )
        )
    return found


def _check_early_layers(layer_report: dict[str, Any], s: DiagnosisSettings) -> list[dict[str, Any]]:
    found = []
    num_layers = len(layer_report["layers"])
    early = s.early_layers if s.early_layers is not None else max(1, num_layers // 4)
    for kind in KINDS:
        overall = _overall_rate(layer_report, kind)
        limit = max(s.early_min_rate, s.early_rate_factor * overall)
        # one group fewer must still exceed the limit: with 3 groups a layer cannot lose less than 33%
        hit = [
            (e["layer"], e[kind]["rate"])
            for e in layer_report["layers"][:early]
            if kind in e and e[kind]["rate"] - 1 / e[kind]["groups_before"] > limit
        ]
        if not hit:
            continue
        found.append(
            _issue(
                "early_layers_over_pruned",
                "error" if max(r for _, r in hit) >= 0.9 else "warning",
                [i for i, _ in hit],
                {
                    "rates": _per_layer([i for i, _ in hit], dict(hit), "rate"),
                    "overall_rate": overall,
                    "limit": limit,
                    "early_layers": early,
                },
                f"early layers {[i for i, _ in hit]} lose up to {max(r for _, r in hit):.0%} of their {kind} "
                f"groups against {overall:.0%} over the whole model",
                f"cap them: ranking.first_layers: {max(i for i, _ in hit) + 1} with "
                f"ranking.first_layers_max_rate: {max(overall, 0.05):.2f}, or ranking.protected_layers: "
                f"{[i for i, _ in hit]}; a layer correction (ranking.tau: null) also stops small-scale "
                "early layers from being ranked last",
                kind,
            )
        )
    return found


def diagnose(
    statistics: dict[str, Any], layer_report: dict[str, Any], settings: DiagnosisSettings | None = None
) -> dict[str, Any]:
    """The content of ``analysis/gradient_diagnosis.json`` (schema: :data:`SCHEMA_ID`)."""
    s = settings or DiagnosisSettings()
    gradients = statistics.get("gradients_collected", False)
    checks: list[tuple[str, list[dict[str, Any]] | None]] = [
        ("calibration_loss", _check_loss(statistics, s)),
        ("gradients", _check_gradients(statistics, s) if gradients else None),
        ("scale_spread", _check_scale_spread(statistics, layer_report, s)),
        ("many_layers_over_pruned", _check_over_pruned(layer_report, s)),
        ("early_layers_over_pruned", _check_early_layers(layer_report, s)),
    ]
    issues = [issue for _, found in checks for issue in (found or [])]
    counts = {level: sum(i["severity"] == level for i in issues) for level in ("error", "warning", "info")}
    problems = counts["error"] + counts["warning"]
    return {
        "schema": SCHEMA_ID,
        "status": "issues_found" if problems else "no_issues",
        "summary": (
            f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} note(s)"
            if issues
            else "no issue found: scales, rates and gradients are within the thresholds"
        ),
        "counts": counts,
        "issues": issues,
        "checks": [
            {
                "id": name,
                "status": "skipped" if found is None else ("failed" if found else "passed"),
                "reason": f"criterion {statistics.get('criterion')!r} collects no gradients"
                if found is None
                else None,
            }
            for name, found in checks
        ],
        "settings": asdict(s),
    }
