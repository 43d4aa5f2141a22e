"""PNG plots of a pruning run, drawn from ``analysis/gradient_statistics.json`` and ``layer_report.json``.

The figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, never through pyplot: pyplot
keeps global figure state and may try to open a display, which breaks on headless machines and in threads.
Every PNG has a fixed pixel size (:data:`SIZES`, no ``bbox_inches="tight"``) so reports can lay them out and
runs can be compared side by side. Values from bad runs (None, NaN, inf) are skipped rather than raised on:
a plot of a broken run is exactly what a person needs to see why it broke.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator

from prunelight.diagnostics.statistics import series
from prunelight.importance.gradients import KINDS

SIZES: dict[str, tuple[int, int]] = {
    "gradient_analysis": (1200, 1400),
    "pruning_rates": (1200, 600),
    "ranking_stages": (1200, 900),
    "compare_rates": (1200, 600),
    "heatmap": (1000, 700),
    "sparsity": (1200, 600),
    "reconstruction": (1200, 900),
    "allocation_search": (1200, 1200),
}
COLORS = {"attention": "tab:blue", "mlp": "tab:orange"}
# reconstruction.json's refit projections: entry key -> panel title
PROJECTIONS = {"o": "o_proj (attention output)", "down": "down_proj (MLP output)"}
# stage -> label, line style: a later stage is drawn thinner on top, so identical stages still all show
STAGES = {
    "raw": ("raw", "-o", 3.0),
    "normalized": ("normalized", "--s", 2.2),
    "block": ("block (after T)", "-.^", 1.6),
    "layer": ("layer (after tau)", ":D", 1.2),
}
_LABEL_BOX = {"facecolor": "white", "edgecolor": "none", "pad": 1.0}  # keeps a label readable over hatching
# legends sit right of the axes, where they can never hide data
_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": "small"}


def _figure(name: str, rows: int = 1, sharex: bool = True) -> tuple[Figure, list[Axes]]:
    """A figure of exactly ``SIZES[name]`` pixels; constrained layout keeps outside legends on the canvas."""
    width, height = SIZES[name]
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False, sharex=sharex and rows > 1)[:, 0]
    return fig, list(axes)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write through a temp file and rename, so a reader (or a crash) never sees a half-written PNG."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(suffix=".png", prefix=f".{target.stem}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            fig.savefig(stream, format="png", dpi=100)
        os.chmod(temp, 0o644)  # mkstemp makes it private; a plot is meant to be shared
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return target


def _finite(value: Any) -> float | None:
    """The value as a float, or None for absent / non-numeric / NaN / inf (a bad run must still plot)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _points(xs: Sequence[int], ys: Iterable[Any]) -> tuple[list[int], list[float]]:
    """The (x, y) pairs whose y is finite: gaps are better than a crash or a line dragged to infinity."""
    pairs = [(x, v) for x, v in zip(xs, map(_finite, ys), strict=True) if v is not None]
    return [x for x, _ in pairs], [v for _, v in pairs]


def _scale(ax: Axes, values: Iterable[float], symlog: bool = False) -> None:
    """Log when every value is positive, else symlog linear just around the smallest nonzero magnitude.

    Gradient and score statistics span many decades across layers, so a linear axis would flatten all but
    the largest layer; signed values (gradient min/mean) cannot go on a log axis at all. ``symlog`` keeps
    an axis that is signed by nature on symlog even when this run's values happen to be positive.
    """
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return
    if min(values) > 0 and not symlog:
        ax.set_yscale("log")
    else:
        smallest = max(min((abs(v) for v in values if v != 0), default=1.0), 1e-12)
        # a whole decade, so the decade ticks never fall inside the linear band and crowd the 0 label
        ax.set_yscale("symlog", linthresh=10.0 ** math.floor(math.log10(smallest)))
        ax.yaxis.get_major_locator().set_params(numticks=7)  # one label per decade would overlap near zero


class _PlainLogFormatter(LogFormatterSciNotation):
    """Matplotlib's choice of which log ticks to label, written plainly (0.9, 400, not 9x10^-1, 4x10^2)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:.4g}" if super().__call__(x, pos) else ""


def _plain_labels(axis: Axis) -> None:
    """Relative scores and perplexities sit within a few decades of 1, where plain numbers read faster."""
    if axis.get_scale() == "log":
        axis.set_major_formatter(_PlainLogFormatter())
        axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def _no_data(ax: Axes, text: str) -> None:
    """Say why a panel is empty, so a missing plot is not mistaken for a zero one."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.4")
    ax.set_yticks([])


def _layer_axis(ax: Axes, title: str, ylabel: str) -> None:
    """Shared decoration for the per-layer panels: integer layer ticks, a grid and an outside legend."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ax.get_subplotspec().is_last_row():  # panels above share the x axis and hide its labels
        ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**_OUTSIDE)


def _removed_fraction(entries: list[dict[str, Any]]) -> tuple[list[int], list[float | None]]:
    """Per layer, the share of its parameters pruned away: the one number comparable across criteria."""
    fractions: list[float | None] = []
    for entry in entries:
        before, after = _finite(entry.get("params_before")), _finite(entry.get("params_after"))
        fractions.append(None if not before or after is None else 1.0 - after / before)
    return [entry["layer"] for entry in entries], fractions


def gradient_analysis(statistics: dict[str, Any], path: str | os.PathLike) -> Path:
    """Gradients next to importance and rate per layer: shows whether gradient scale drove the ranking."""
    fig, (stats_ax, range_ax, norm_ax) = _figure("gradient_analysis", rows=3)
    layers = [entry["layer"] for entry in statistics["layers"]]
    kinds = [kind for kind in KINDS if all(kind in entry for entry in statistics["layers"])]
    collected = bool(statistics.get("gradients_collected"))
    stats_values: list[float] = []
    range_values: list[float] = []
    for kind in kinds if collected else []:
        color = COLORS[kind]
        gradient = {
            stat: series(statistics, kind, "gradient", stat) for stat in ("mean", "std", "norm", "min", "max")
        }
        gradient["|mean|"] = [None if v is None else abs(v) for v in gradient["mean"]]
        for stat, style in (("|mean|", "-o"), ("std", "--s"), ("norm", ":^")):
            xs, ys = _points(layers, gradient[stat])
            stats_ax.plot(xs, ys, style, color=color, markersize=4, label=f"{kind} {stat}")
            stats_values += ys
        bounds = zip(layers, map(_finite, gradient["min"]), map(_finite, gradient["max"]), strict=True)
        band = [(x, low, high) for x, low, high in bounds if low is not None and high is not None]
        if band:
            xs, lows, highs = (list(column) for column in zip(*band, strict=True))
            range_ax.fill_between(xs, lows, highs, color=color, alpha=0.25, label=f"{kind} min..max")
            range_values += lows + highs
        xs, ys = _points(layers, gradient["mean"])
        range_ax.plot(xs, ys, "-o", color=color, markersize=4, label=f"{kind} mean")
        range_values += ys
    empty = f"no gradients: criterion {statistics.get('criterion')} is forward-only"
    for ax, values, title, label, signed in (
        (stats_ax, stats_values, "Gradient statistics per layer (log scale)", "|mean|, std, norm", False),
        (range_ax, range_values, "Gradient range per layer", "gradient value (symlog)", True),
    ):
        if not values:
            _no_data(ax, empty if not collected else "no finite gradient values")
        _scale(ax, values, symlog=signed)
        _layer_axis(ax, title, label)

    sources = (
        ("gradient", "norm", "gradient norm / max", "-o"),
        ("importance", "mean", "importance / max", "--s"),
    )
    for kind in kinds:
        for source, stat, name, style in sources[0 if collected else 1 :]:
            xs, ys = _points(layers, series(statistics, kind, source, stat))
            top = max((abs(v) for v in ys), default=0.0)
            if top > 0:
                norm_ax.plot(
                    xs, [v / top for v in ys], style, color=COLORS[kind], markersize=4, label=f"{kind} {name}"
                )
        xs, ys = _points(layers, series(statistics, kind, "rate", ""))
        norm_ax.plot(xs, ys, "-.D", color=COLORS[kind], markersize=4, alpha=0.7, label=f"{kind} pruning rate")
    norm_ax.set_ylim(0, 1.05)
    _layer_axis(norm_ax, "Normalised gradient vs importance vs pruning rate", "fraction of max / rate")
    fig.suptitle(f"Gradient analysis: criterion {statistics.get('criterion')}")
    return _save(fig, path)


def pruning_rates(layer_report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Where the pruning went: per-kind rates as bars, the layer's lost parameters as a line."""
    fig, (ax,) = _figure("pruning_rates")
    entries = layer_report["layers"]
    kinds = [kind for kind in KINDS if any(kind in entry for entry in entries)]
    width = 0.8 / max(len(kinds), 1)
    for position, kind in enumerate(kinds):
        offset = (position - (len(kinds) - 1) / 2) * width
        xs, ys = _points(
            [e["layer"] for e in entries if kind in e], [e[kind].get("rate") for e in entries if kind in e]
        )
        ax.bar([x + offset for x in xs], ys, width, color=COLORS[kind], label=f"{kind} rate")
    xs, ys = _points(*_removed_fraction(entries))
    ax.plot(xs, ys, "-o", color="black", markersize=4, label="parameters removed")
    marks = {"layer_removed": ("removed", "0.5", "//"), "protected": ("protected", "tab:green", "..")}
    for key, (text, color, hatch) in marks.items():
        flagged = [entry["layer"] for entry in entries if entry.get(key)]
        for layer in flagged:
            label = f"{text} layer" if layer == flagged[0] else None  # one legend entry per mark
            ax.axvspan(
                layer - 0.45, layer + 0.45, facecolor="none", edgecolor=color, hatch=hatch, label=label
            )
            ax.text(
                layer, 1.06, text, ha="center", va="center", fontsize="small", color=color, bbox=_LABEL_BOX
            )
    ax.set_ylim(0, 1.12)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    _layer_axis(ax, "Pruning rate per layer", "rate / fraction removed")
    return _save(fig, path)


def ranking_stages(layer_report: dict[str, Any], path: str | os.PathLike) -> Path:
    """How each ranking stage reshapes the per-layer scores: a spread raw curve should end flat after tau."""
    entries = layer_report["layers"]
    kinds = [kind for kind in KINDS if any(kind in entry for entry in entries)]
    fig, axes = _figure("ranking_stages", rows=max(len(kinds), 1))
    tau = layer_report.get("tau")
    for ax, kind in zip(axes, kinds, strict=False):  # no kinds: one empty panel
        present = [entry for entry in entries if kind in entry]
        values: list[float] = []
        for stage, (name, style, width) in STAGES.items():
            means = [e[kind].get("scores", {}).get(stage, {}).get("mean") for e in present]
            xs, ys = _points([e["layer"] for e in present], means)
            average = sum(ys) / len(ys) if ys else 0.0
            if average == 0:
                continue
            relative = [v / average for v in ys]
            positive = [v for v in relative if v > 0]
            span = f", spans {max(positive) / min(positive):.3g}x" if positive else ""
            ax.plot(xs, relative, style, linewidth=width, markersize=2 + width, label=f"{name}{span}")
            values += relative
        if not values:
            _no_data(ax, f"no finite {kind} scores")
        _scale(ax, values)
        if ax.get_yscale() == "log":  # at least 0.5..2, so a nearly flat stage also looks flat
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, 0.5), max(high, 2.0))
        _plain_labels(ax.yaxis)
        ax.axhline(1.0, color="0.6", linewidth=0.8)
        kind_tau = _finite(tau.get(kind) if isinstance(tau, dict) else tau)
        suffix = "" if kind_tau is None else f" (tau = {kind_tau:.3g})"
        _layer_axis(ax, f"{kind}{suffix}", "relative to average layer")
    if not kinds:
        _no_data(axes[0], "no attention or MLP entries in the layer report")
    fig.suptitle("Ranking stages: mean score per layer / mean over layers (1 = average layer)")
    return _save(fig, path)


def compare_rates(runs: dict[str, dict[str, Any]], path: str | os.PathLike) -> Path:
    """Several runs' per-layer parameter removal on one axis, so their allocation shapes can be compared."""
    fig, (ax,) = _figure("compare_rates")
    for label, report in runs.items():
        entries = report["layers"]
        xs, ys = _points(*_removed_fraction(entries))
        before = sum(_finite(e.get("params_before")) or 0.0 for e in entries)
        after = sum(_finite(e.get("params_after")) or 0.0 for e in entries)
        total = f" ({1 - after / before:.1%} overall)" if before else ""
        ax.plot(xs, ys, "-o", markersize=4, label=f"{label}{total}")
    if not runs:
        _no_data(ax, "no runs to compare")
    ax.set_ylim(0, 1.05)
    _layer_axis(ax, "Fraction of each layer's parameters removed", "1 - params after / params before")
    return _save(fig, path)


def heatmap(
    rows: list[str],
    columns: list[str],
    values: list[list[float | None]],
    path: str | os.PathLike,
    title: str,
    value_label: str = "perplexity",
) -> Path:
    """A grid of results (e.g. perplexity per criterion x sparsity) with every number readable in its cell."""
    if len(values) != len(rows) or any(len(row) != len(columns) for row in values):
        raise ValueError(f"heatmap values must be {len(rows)} rows x {len(columns)} columns")
    fig, (ax,) = _figure("heatmap")
    fig.suptitle(title)  # a title on the axes makes constrained layout squeeze them when it is long
    if not rows or not columns:
        _no_data(ax, "no results")
        return _save(fig, path)
    grid = [[_finite(v) for v in row] for row in values]
    finite = [v for row in grid for v in row if v is not None]
    # perplexities span orders of magnitude between a good and a broken setting: log colours keep both visible
    if finite and min(finite) > 0:
        norm: Normalize = LogNorm(min(finite), max(finite) if max(finite) > min(finite) else min(finite) * 10)
    else:
        norm = Normalize(min(finite, default=0.0), max(finite, default=1.0))
    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    cells = [[math.nan if v is None else v for v in row] for row in grid]
    image = ax.imshow(cells, cmap=cmap, norm=norm, aspect="auto")  # fill the fixed canvas whatever the shape
    size = max(6.0, min(11.0, 90.0 / max(len(rows), len(columns), 1)))
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            text, color = "-", "0.45"
            if value is not None:
                red, green, blue, _ = cmap(norm(value))
                light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # dark text on light cells
                text, color = f"{value:.4g}", "black" if light else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color=color)
    crowded = len(columns) > 6
    ax.set_xticks(
        range(len(columns)), columns, rotation=30 if crowded else 0, ha="right" if crowded else "center"
    )
    ax.set_yticks(range(len(rows)), rows)
    _plain_labels(fig.colorbar(image, ax=ax, label=value_label).ax.yaxis)
    return _save(fig, path)


def sparsity_layers(sparsity: dict[str, Any], path: str | os.PathLike) -> Path:
    """Reached sparsity per layer, stacked by tier (structures removed, whole tiles, single weights), with
    the layer's target where there was one."""
    fig, (ax,) = _figure("sparsity")
    entries = sparsity["layers"]
    xs = [e["layer"] for e in entries]
    removed = [e["removed"] / e["dense"] for e in entries]
    tiles = [e["tile_zeros"] / e["dense"] for e in entries]
    singles = [(e["zeros"] - e["tile_zeros"]) / e["dense"] for e in entries]
    bottom = [0.0] * len(xs)
    for values, label, color in (
        (removed, "structures removed", "tab:purple"),
        (tiles, "whole tiles", "tab:orange"),
        (singles, "single weights", "tab:blue"),
    ):
        if any(values):
            ax.bar(xs, values, 0.8, bottom=bottom, color=color, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    targets = [e.get("target") for e in entries]
    if any(t is not None for t in targets):
        ax.plot(*_points(xs, targets), "_", color="black", markersize=18, mew=2, label="layer target")
    ax.axhline(sparsity["target"], color="0.4", linestyle="--", linewidth=1, label="overall target")
    ax.set_ylim(0, 1.0)
    _layer_axis(ax, f"Sparsity per layer ({sparsity['pattern']})", "fraction of the layer's weights")
    return _save(fig, path)


def reconstruction(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """The repair per layer: o_proj's and down_proj's relative output error before and after the refit, as
    grouped bars, with the removed layers and the spans of the layer map marked."""
    entries = data["layers"]
    fig, axes = _figure("reconstruction", rows=len(PROJECTIONS))
    width = 0.4
    for ax, (name, title) in zip(axes, PROJECTIONS.items(), strict=True):
        values: list[float] = []
        for offset, stage, color in ((-width / 2, "before", "0.6"), (width / 2, "after", "tab:green")):
            xs, ys = _points(
                [e["layer"] for e in entries if e.get(name)],
                [e[name].get(stage) for e in entries if e.get(name)],
            )
            if ys:
                ax.bar([x + offset for x in xs], ys, width, color=color, label=f"{stage} the refit")
                values += ys
        if not values:
            _no_data(ax, f"no {name}_proj refit")
        _scale(ax, values)
        if ax.get_yscale() == "log" and max(values) / min(v for v in values if v > 0) < 10:
            ax.set_yscale("linear")  # within a decade, bars from zero read better
            ax.set_ylim(0, max(values) * 1.15)
        _plain_labels(ax.yaxis)
        _mark_removed(ax, entries)
        if entries:
            ax.set_xlim(min(e["layer"] for e in entries) - 0.6, max(e["layer"] for e in entries) + 0.6)
        _layer_axis(ax, title, "relative output error")
    fig.suptitle(f"Reconstruction: {data.get('method', '-')} (damping {data.get('damping', '-')})")
    return _save(fig, path)


def allocation_search(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """The allocation search (``analysis/search.json``): the parent's KL per generation against the seeds',
    then, per kind, each layer's removed fraction in the T/tau plan and in the chosen plan."""
    rates = data["rates"]
    kinds = list(rates.get("search", {}))
    fig, axes = _figure("allocation_search", rows=1 + len(kinds), sharex=False)
    ax = axes[0]
    history = data["history"]
    if history:
        ax.plot([h["generation"] for h in history], [h["fitness"] for h in history], "-o", color="tab:green",
                label="search (parent, last stage)")  # fmt: skip
    for (name, value), style in zip(data["seed_fitness"].items(), ("--", ":", "-."), strict=False):
        ax.axhline(value, color="0.4", linestyle=style, label=f"seed: {name}")
    ax.set_xlabel("generation")
    ax.set_ylabel("KL(dense || candidate)")
    ax.legend(loc="upper right")
    ax.set_title(f"fitness per generation; chosen on the held-out windows: {data['chosen']}")
    chosen = data["chosen"]
    for ax, kind in zip(axes[1:], kinds, strict=True):
        for name, style, color in (
            ("T/tau plan", "-o", "0.5"),
            (chosen, "-s", COLORS.get(kind, "tab:green")),
        ):
            values = rates.get(name, {}).get(kind)
            if values:
                ax.plot(range(len(values)), values, style, color=color, label=name)
        _layer_axis(ax, f"{kind}: fraction of groups removed", "removed fraction")
    return _save(fig, path)


def _mark_removed(ax: Axes, entries: list[dict[str, Any]]) -> None:
    """Hatch the removed layers; a span the layer map replaced is one band, labelled with its error."""
    mapped: set[int] = set()
    first = True
    for entry in entries:
        span = (entry.get("map") or {}).get("span")
        if not span:
            continue
        start, end = span
        mapped.update(range(start, end))
        error = entry["map"]
        text = (
            f"map into layer {error['into_layer']}: {error['before']:.3g} -> {error['after']:.3g}"
            if "after" in error
            else "map skipped"
        )
        ax.axvspan(
            start - 0.45,
            end - 0.55,
            facecolor="none",
            edgecolor="tab:purple",
            hatch="//",
            label="layer map span" if first else None,
        )
        ax.text(
            (start + end - 1) / 2, 0.95, text, transform=ax.get_xaxis_transform(), ha="center", va="top",
            fontsize="small", color="tab:purple", bbox=_LABEL_BOX,
        )  # fmt: skip
        first = False
    dropped = [e["layer"] for e in entries if e.get("removed") and e["layer"] not in mapped]
    for layer in dropped:
        label = "removed layer" if layer == dropped[0] else None
        ax.axvspan(layer - 0.45, layer + 0.45, facecolor="none", edgecolor="0.5", hatch="\\\\", label=label)
