"""The ``prune`` stage with a sparse pattern: masks instead of (or, for ``hybrid``, after) removed structures.

Order: dense evaluation -> (hybrid) structured tier through the structured core -> per-layer sparsity
(uniform or OWL, under the ranking's limits) -> masks, one pass or layer by layer -> sparsity measured on
the weights -> save -> pruned evaluation -> reports. The results folder has the structured run's layout;
``analysis/sparsity.json`` replaces the gradient analysis.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from prunelight.apply import LayerInputMeans, apply_plan
from prunelight.apply.sparse import (
    LayerPattern,
    element_scores,
    measure_sparsity,
    projection_sizes,
    prune_layer,
    removal_units,
)
from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.calibration.sequential import prune_sequentially
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.callbacks.layer_inputs import CaptureCallback, LayerInputsCallback, sum_across_ranks
from prunelight.diagnostics.layers import layer_report
from prunelight.errors import ConfigError
from prunelight.importance.criteria import criterion_info
from prunelight.importance.inputs import LayerInputs
from prunelight.io import write_json
from prunelight.loops import calibrate, run_calibration
from prunelight.measure import peak_memory, reset_peak_memory
from prunelight.models.projections import PROJECTIONS
from prunelight.models.sharding import refuse_sharding
from prunelight.ranking import RankingConfig, rank
from prunelight.ranking.rank import layer_constraints
from prunelight.ranking.sparsity import (
    allocate_sparsity,
    layer_bounds,
    outlier_ratio,
    owl_sparsities,
    projection_counts,
)
from prunelight.reports.sparse import write_sparse_report
from prunelight.save import save_pruned
from prunelight.stages.evaluation import check_zero_shot, evaluate_calibrated, part_of
from prunelight.stages.settings import PruneSettings, SparsitySettings


def prune_sparse(
    trainer: L.Trainer, module: CalibrationModule, datamodule: CalibrationDataModule, settings: PruneSettings
) -> dict[str, Any]:
    """Run the whole sparse stage; return what ``summary.md`` reports."""
    importance, ranking, sparsity = settings.importance, settings.ranking, settings.sparsity
    compensation, evaluation = settings.compensation, settings.evaluation
    assert sparsity is not None
    refuse_sharding(trainer.strategy, "sparse pruning (a sparsity section)")
    sparsity.check()
    criterion = importance.criterion
    sparsity.check_criterion(criterion)
    if sparsity.semi_structured:
        _check_semi_structured(sparsity, trainer)
    check_zero_shot(evaluation)
    run_dir = Path(trainer.default_root_dir)
    device = trainer.strategy.root_device
    reset_peak_memory(device)
    seconds: dict[str, float] = {}
    analysis = run_dir / "analysis"

    model = _loaded(module, device)
    adapter = module.adapter
    dense_sizes = projection_sizes(model, adapter)
    dense_params = sum(p.numel() for p in model.parameters())
    dense = None
    if evaluation is not None and evaluation.dense:
        dense = evaluate_calibrated(trainer, module, evaluation, "dense")
    target = sparsity.target
    structured = None
    calibration: dict[str, Any] = {"criterion": criterion, "passes": []}

    start = time.perf_counter()
    if sparsity.sparse_pattern.structures and sparsity.structures_share > 0:
        callback = ImportanceCallback(criterion, gradient_statistics=False, input_means=compensation)
        calibrated = calibrate(trainer, module, datamodule, callback)
        calibration["passes"].append("structured tier (one pass)")
        tier = dataclasses.replace(ranking, ratio=sparsity.structures_share * target, ratio_of="prunable")
        structured = rank(calibrated.table, tier)
        means = {i: LayerInputMeans(m["o"], m["down"]) for i, m in calibrated.input_means.items()}
        apply_plan(model, structured.plan, compensation=means if compensation else None)
        if trainer.is_global_zero:
            write_json(analysis / "plan.json", structured.to_dict())
            write_json(analysis / "layer_report.json", layer_report(calibrated.table, structured))

    one_pass: list[LayerInputs] | None = None
    if sparsity.allocation == "owl" and criterion_info(criterion).needs_layer_inputs:
        one_pass = _one_pass(trainer, module, datamodule, hessian=False)
        calibration["passes"].append("OWL outlier ratios (one pass)")
    ratios, layer_sparsity, projections = _layer_targets(
        model, adapter, dense_sizes, sparsity, ranking, one_pass
    )
    needs_inputs = criterion_info(criterion).needs_layer_inputs
    tier_fraction = (
        sparsity.blocks_share / (1.0 - sparsity.structures_share) if sparsity.structures_share < 1 else 0.0
    )

    def pattern_of(index: int) -> LayerPattern:
        return LayerPattern(
            sparsity.pattern,
            criterion,
            layer_sparsity[index],
            sparsity.comparison,
            sparsity.n,
            sparsity.m,
            sparsity.block,
            tile_sparsity=layer_sparsity[index] * tier_fraction,
            damping=sparsity.sparsegpt_damping,
            block_size=sparsity.sparsegpt_block_size,
            projections=projections[index],
        )

    def prune(index: int, modules: Any, inputs: LayerInputs | None) -> None:
        prune_layer(modules, inputs, pattern_of(index), index)

    layers = adapter.decoder_layers(model)
    if not needs_inputs:
        for index, layer in enumerate(layers):
            prune(index, adapter.modules(layer), None)
    elif sparsity.calibration == "one_pass":
        if one_pass is None:
            one_pass = _one_pass(trainer, module, datamodule, hessian=False)
            calibration["passes"].append("statistics (one pass)")
        for index, layer in enumerate(layers):
            prune(index, adapter.modules(layer), one_pass[index])
    else:
        capture = CaptureCallback(sparsity.offload_inputs)
        run_calibration(trainer, module, datamodule, capture)
        calibration["passes"].append("layer inputs (sequential)")
        assert capture.result is not None
        prune_sequentially(
            model,
            adapter,
            capture.result,
            prune,
            hessian=criterion_info(criterion).needs_hessian,
            reduce_sum=sum_across_ranks(trainer),
            progress=trainer.is_global_zero,
        )
        del capture
    seconds["pruning"] = time.perf_counter() - start
    if datamodule.windows is not None:  # magnitude needs no calibration data
        calibration.update(datamodule.describe())
    calibration.update(seconds=seconds["pruning"], **peak_memory(device))

    block = sparsity.block if sparsity.sparse_pattern.tiles else None
    measured = measure_sparsity(model, adapter, dense_sizes, block)
    for entry, asked in zip(measured["layers"], layer_sparsity, strict=True):
        entry["target"] = asked if structured is None else None
    pruned_params = sum(p.numel() for p in model.parameters())
    report: dict[str, Any] = {
        "model": module.spec.path,
        "kind": "sparse",
        "parameters": {
            "dense": dense_params,
            "pruned": pruned_params,
            "ratio": 1 - pruned_params / dense_params,
            "zeros": measured["overall"]["zeros"],
        },
        "sparsity_reached": measured["overall"]["sparsity"],
        "sparsity_target": target,
        "perplexity": {"dense": part_of(dense, "perplexity"), "pruned": None},
        "zero_shot": {"dense": part_of(dense, "zero_shot"), "pruned": None},
        "calibration": calibration,
        "importance": vars(importance),
        "sparsity": {**vars(sparsity), "block": list(sparsity.block)},
        "ranking": dataclasses.asdict(ranking),
        "compensation": compensation,
        "evaluation": vars(evaluation) if evaluation else None,
        "seconds": seconds,
    }
    if trainer.is_global_zero:
        write_json(
            analysis / "sparsity.json",
            {
                "pattern": sparsity.pattern,
                "target": target,
                "structured_removed": structured.removed_params if structured else 0,
                "owl_outlier_ratios": ratios,
                "layer_targets": layer_sparsity,
                **measured,
            },
        )
        write_json(analysis / "calibration.json", calibration)
        if settings.save_model:
            start = time.perf_counter()
            save_pruned(model, module.tokenizer, run_dir / "pruned_model")
            seconds["save"] = time.perf_counter() - start
    trainer.strategy.barrier()
    if sparsity.semi_structured:
        from prunelight.save.semi_structured import to_semi_structured

        report["semi_structured_layers"] = to_semi_structured(model, adapter)
    if evaluation:
        pruned = evaluate_calibrated(trainer, module, evaluation, "pruned")
        report["perplexity"]["pruned"] = pruned["perplexity"]
        report["zero_shot"]["pruned"] = pruned["zero_shot"]
    if trainer.is_global_zero:
        write_json(analysis / "prune.json", report)
        write_sparse_report(run_dir)  # plot, TensorBoard, and summary.md last
    trainer.strategy.barrier()
    return report


def _layer_targets(
    model: torch.nn.Module,
    adapter: Any,
    dense_sizes: list[dict[str, int]],
    sparsity: SparsitySettings,
    ranking: RankingConfig,
    one_pass: list[LayerInputs] | None,
) -> tuple[list[float] | None, list[float], list[dict[str, float] | None]]:
    """Each layer's sparsity and each projection's exact share of what is still to go.

    What structures already removed counts towards the target; the rest is spread over the remaining
    weights (uniformly or by OWL, under the ranking's limits), then rounded to whole removal units across
    all projections at once (:func:`projection_counts`). Returns OWL's outlier ratios (or None), the layer
    sparsities and the per-projection sparsities (None for N:M, whose layers are all ``1 - n/m``).
    """
    target = sparsity.target
    current = projection_sizes(model, adapter)
    sizes = [sum(layer.values()) for layer in current]
    dense_total = sum(sum(layer.values()) for layer in dense_sizes)
    rest = max(0.0, target * dense_total - (dense_total - sum(sizes))) / sum(sizes)
    ratios = None
    raw = [rest] * len(sizes)
    if sparsity.allocation == "owl":
        ratios = [
            outlier_ratio(_layer_scores(model, adapter, index, one_pass), sparsity.owl_m)
            for index in range(len(sizes))
        ]
        raw = owl_sparsities(ratios, rest, sparsity.owl_lambda)
    bounds = layer_bounds(layer_constraints(ranking, len(sizes)), len(sizes))
    if sparsity.sparse_pattern.n_of_m:
        return ratios, [0.0 if high == 0 else target for _, high in bounds], [None] * len(sizes)
    layer_sparsity = allocate_sparsity(raw, sizes, rest, bounds)
    units = removal_units(model, adapter, sparsity.pattern, sparsity.comparison, sparsity.block)
    zeros = round(target * dense_total) - (dense_total - sum(sizes))
    counts = projection_counts(layer_sparsity, current, units, max(zeros, 0))
    projections: list[dict[str, float] | None] = [
        {p: c / current[i][p] for p, c in row.items()} for i, row in enumerate(counts)
    ]
    return ratios, layer_sparsity, projections


def _loaded(module: CalibrationModule, device: torch.device) -> torch.nn.Module:
    """The model, loaded and on the run's device (a magnitude run never goes through the test loop)."""
    if module.model is None:
        module.configure_model()
    assert module.model is not None
    return module.model.to(device)


def _one_pass(
    trainer: L.Trainer, module: CalibrationModule, datamodule: CalibrationDataModule, hessian: bool
) -> list[LayerInputs]:
    callback = LayerInputsCallback(hessian)
    run_calibration(trainer, module, datamodule, callback)
    assert callback.result is not None
    return callback.result


def _layer_scores(
    model: torch.nn.Module, adapter: Any, index: int, inputs: list[LayerInputs] | None
) -> list[torch.Tensor]:
    """The element scores OWL counts outliers in: Wanda's (SparseGPT's runs too, as in OWL), or |W|."""
    modules = adapter.modules(adapter.decoder_layers(model)[index])
    scoring = "magnitude" if inputs is None else "wanda"
    layer_inputs = inputs[index] if inputs is not None else None
    return [
        element_scores(getattr(modules, name).weight, scoring, layer_inputs, name) for name in PROJECTIONS
    ]


def _check_semi_structured(sparsity: SparsitySettings, trainer: L.Trainer) -> None:
    if not sparsity.sparse_pattern.n_of_m or (sparsity.n, sparsity.m) != (2, 4):
        raise ConfigError("semi_structured converts 2:4 layers only; set pattern: nm, n: 2, m: 4")
    if trainer.strategy.root_device.type != "cuda":
        raise ConfigError(
            "semi_structured needs a CUDA GPU (PyTorch's sparse tensor cores); run on a GPU or set it false"
        )
