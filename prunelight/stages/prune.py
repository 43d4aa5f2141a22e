"""The ``prune`` stage: calibrate -> rank -> apply -> evaluate -> save, into one results folder.

The folder is complete only when ``summary.md`` exists: it is written last, the pruned model is written
under a temporary name and renamed, and a failure removes what the run created.
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch

from prunelight.apply import LayerInputMeans, apply_plan
from prunelight.calibration import CalibrationDataModule, CalibrationModule
from prunelight.calibration.obs_scores import obs_scores_sequentially
from prunelight.calibration.reconstruct import (
    Reconstruction,
    reconstruct_sequentially,
    reconstruction_named,
    reconstruction_summary,
    warn_if_few_tokens,
)
from prunelight.calibration.search_fitness import search_allocation
from prunelight.calibration.sequential import Captured
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.callbacks.layer_inputs import CaptureCallback, sum_across_ranks
from prunelight.diagnostics.layers import layer_report
from prunelight.diagnostics.statistics import gradient_statistics
from prunelight.errors import ConfigError
from prunelight.evaluate import PerplexityModule
from prunelight.importance import Calibrated
from prunelight.importance.criteria import criterion_info
from prunelight.io import write_json
from prunelight.loops import calibrate, run_calibration
from prunelight.measure import peak_memory, reset_peak_memory
from prunelight.models.sharding import is_sharded, refuse_sharding, unsharded_copy
from prunelight.ranking import rank
from prunelight.ranking.plan import PruningPlan
from prunelight.reports import write_diagnostics
from prunelight.run_folder import rewritten
from prunelight.save import save_pruned
from prunelight.stages.check import check_stage
from prunelight.stages.evaluation import (
    check_modules,
    check_zero_shot,
    evaluate_calibrated,
    evaluate_module,
    part_of,
)
from prunelight.stages.settings import PruneSettings, ReconstructionSettings
from prunelight.stages.sparse import prune_sparse


def run_prune(
    trainer: L.Trainer,
    module: CalibrationModule,
    datamodule: CalibrationDataModule | None,
    settings: PruneSettings,
) -> dict[str, Any]:
    """The ``prune`` subcommand: check everything, then :func:`prune_model` into ``default_root_dir``."""
    ranking, evaluation, sparsity = settings.ranking, settings.evaluation, settings.sparsity
    check_stage(trainer, module, datamodule, ranking, evaluation, sparsity, search=settings.search)
    with rewritten(Path(trainer.default_root_dir)):
        return prune_model(trainer, module, datamodule, settings)


def prune_model(
    trainer: L.Trainer, module: CalibrationModule, datamodule: Any, settings: PruneSettings
) -> dict[str, Any]:
    """Prune ``module``'s model in memory (structures, or a sparse pattern when ``settings.sparsity`` is set)
    and write the run's files; return what ``summary.md`` reports. The pipeline calls this directly."""
    check_modules(module, datamodule)
    if settings.sparsity is not None:
        return prune_sparse(trainer, module, datamodule, settings)
    return prune_structures(trainer, module, datamodule, settings)


def prune_structures(
    trainer: L.Trainer, module: CalibrationModule, datamodule: CalibrationDataModule, settings: PruneSettings
) -> dict[str, Any]:
    """Calibrate -> rank -> remove -> evaluate -> save; return what ``summary.md`` reports."""
    importance, ranking, compensation = settings.importance, settings.ranking, settings.compensation
    evaluation, diagnosis = settings.evaluation, settings.diagnosis
    if not criterion_info(importance.criterion).structured:
        raise ConfigError(
            f"criterion {importance.criterion!r} prunes single weights, not structures; add a sparsity "
            "section (sparsity.pattern: unstructured or nm) or pick a structured criterion"
        )
    check_zero_shot(evaluation)
    if evaluation is not None and evaluation.zero_shot is not None:
        refuse_sharding(trainer.strategy, "zero-shot evaluation (lm-eval runs the model on rank 0 alone)")
    run_dir = Path(trainer.default_root_dir)

    sequential = criterion_info(importance.criterion).sequential_scoring
    device = trainer.strategy.root_device
    reset_peak_memory(device)
    start = time.perf_counter()
    if sequential:
        calibrated = _score_sequentially(trainer, module, datamodule, settings)
    else:
        callback = ImportanceCallback(
            importance.criterion,
            importance.aggregation,
            importance.magnitude_norm,
            importance.gradient_statistics,
            input_means=compensation,
        )
        calibrated = calibrate(trainer, module, datamodule, callback)
    calibration = {
        **datamodule.describe(),
        "criterion": importance.criterion,
        "aggregation": importance.aggregation,
        # the loop's own time where the callback took it: under DDP the stage's clock also runs while
        # Lightning's launcher starts the other ranks (their imports, model load and windows)
        "seconds": time.perf_counter() - start if sequential else callback.seconds,
        "tokens": calibrated.tokens,
        "mean_loss": calibrated.mean_loss,
        **peak_memory(device),
    }
    dense_params = sum(p.numel() for p in module.model.parameters())
    dense = None
    if evaluation is not None and evaluation.dense:
        dense = evaluate_calibrated(trainer, module, evaluation, "dense")

    start = time.perf_counter()
    result = rank(calibrated.table, ranking)
    seconds = {"calibration": calibration["seconds"], "ranking": time.perf_counter() - start}
    search_report = None
    if ranking.allocation == "search":
        windows = datamodule.windows.input_ids
        result, search_report = search_allocation(
            module.model,
            calibrated.table,
            result,
            ranking,
            settings.search,
            windows,
            datamodule.batch_size,
            progress=trainer.is_global_zero,
            process=trainer.global_rank,
            processes=trainer.world_size,
            reduce=(lambda t: trainer.strategy.reduce(t, reduce_op="sum"))
            if trainer.world_size > 1
            else None,
            reconstruction=_method(settings.reconstruction),
            damping=settings.reconstruction.damping,
            compensation=compensation,
        )
        seconds["search"] = search_report["seconds"]
    repair, repair_memory = None, {}
    reset_peak_memory(device)
    captured = _capture(trainer, module, datamodule, settings) if settings.reconstruction.enabled else None
    # FSDP2: the plan is applied to a whole copy on rank 0's CPU (None on the other ranks); a repair runs on
    # every rank's copy, one layer at a time on its device, and only rank 0 keeps the result
    sharded = is_sharded(module.model)
    model = _unsharded(module, trainer.is_global_zero or captured is not None, seconds)
    start = time.perf_counter()
    if captured is not None:
        assert model is not None
        repair = _reconstruct(trainer, module, model, datamodule, captured, result.plan, settings, sharded)
        seconds["reconstruction"] = time.perf_counter() - start
        repair_memory = peak_memory(device)  # capture and repair: the captured inputs plus one layer's sums
        if sharded and not trainer.is_global_zero:
            module.model = model = None
    elif model is not None:
        means = {i: LayerInputMeans(m["o"], m["down"]) for i, m in calibrated.input_means.items()}
        apply_plan(model, result.plan, compensation=means if compensation else None)
    seconds["apply"] = time.perf_counter() - start
    staged = run_dir / ".pruned_model.staging"  # FSDP2: the pruned model, for the ranks to read back
    try:
        if sharded and evaluation is not None:
            _save(trainer, model, module, staged, seconds)
            evaluator = PerplexityModule(path=str(staged), dtype=module.spec.dtype)
            pruned = evaluate_module(trainer, evaluator, evaluation, "pruned")
        else:
            pruned = evaluate_calibrated(trainer, module, evaluation, "pruned") if evaluation else None
    except BaseException:
        _remove_staged(trainer, staged)
        raise
    pruned_params = sum(p.numel() for p in model.parameters()) if model is not None else None

    analysis = run_dir / "analysis"
    report = {
        "model": module.spec.path,
        "parameters": {
            "dense": dense_params,
            "pruned": pruned_params,
            "ratio": 1 - pruned_params / dense_params if pruned_params is not None else None,
        },
        "prunable": {"target": result.target_params, "removed": result.removed_params},
        "perplexity": {"dense": part_of(dense, "perplexity"), "pruned": part_of(pruned, "perplexity")},
        "zero_shot": {"dense": part_of(dense, "zero_shot"), "pruned": part_of(pruned, "zero_shot")},
        "calibration": calibration,
        "importance": vars(importance),
        "ranking": asdict(ranking),
        "compensation": compensation,
        "evaluation": vars(evaluation) if evaluation else None,
        "diagnosis": vars(diagnosis),
        "reconstruction": {
            **vars(settings.reconstruction),
            **reconstruction_summary(repair),
            **repair_memory,
        },
        "seconds": seconds,
    }
    if trainer.is_global_zero:
        write_json(analysis / "plan.json", result.to_dict())
        if search_report is not None:
            write_json(analysis / "search.json", search_report)
        if repair is not None:
            # the layer list takes the key "layers", so the layer-map setting is written as "layer_map"
            written = {**vars(settings.reconstruction), "layer_map": settings.reconstruction.layers}
            write_json(analysis / "reconstruction.json", {**written, "layers": repair})
        write_json(analysis / "layer_report.json", layer_report(calibrated.table, result))
        write_json(analysis / "calibration.json", calibration)
        statistics = gradient_statistics(
            importance.criterion, calibrated.table, result, calibrated.gradients, calibrated.mean_loss
        )
        write_json(analysis / "gradient_statistics.json", statistics)
        if settings.save_model and staged.is_dir():
            staged.rename(run_dir / "pruned_model")
        elif settings.save_model:
            start = time.perf_counter()
            assert model is not None
            save_pruned(model, module.tokenizer, run_dir / "pruned_model")
            seconds["save"] = time.perf_counter() - start
        _remove_staged(trainer, staged)
        write_json(analysis / "prune.json", report)
        write_diagnostics(run_dir)  # diagnosis, plots, TensorBoard, and summary.md last
    trainer.strategy.barrier()
    return report


def _capture(
    trainer: L.Trainer, module: CalibrationModule, datamodule: Any, settings: PruneSettings
) -> Captured:
    """This rank's first-layer calibration inputs and every layer's keyword arguments (through the model as
    it runs, sharded or not)."""
    capture = CaptureCallback(settings.reconstruction.offload_inputs)
    run_calibration(trainer, module, datamodule, capture)
    assert capture.result is not None
    return capture.result


def _score_sequentially(
    trainer: L.Trainer, module: CalibrationModule, datamodule: Any, settings: PruneSettings
) -> Calibrated:
    """Capture the first layer's calibration inputs, then score the dense model layer by layer (``obs``)
    with the reconstruction's damping and OBS batch fraction; the sums are all-reduced across ranks before
    each layer is scored. Under FSDP2 every rank scores a whole copy in host memory, one layer at a time on
    its device."""
    captured = _capture(trainer, module, datamodule, settings)
    assert module.model is not None
    sharded = is_sharded(module.model)
    model = unsharded_copy(module.model) if sharded else module.model
    assert model is not None
    calibrated = obs_scores_sequentially(
        model,
        module.adapter,
        captured,
        settings.reconstruction.damping,
        reduce_sum=sum_across_ranks(trainer),
        progress=trainer.is_global_zero,
        center=settings.compensation,
        batch_fraction=settings.reconstruction.obs_batch_fraction,
        device=trainer.strategy.root_device if sharded else None,
    )
    del model
    return calibrated


def _reconstruct(
    trainer: L.Trainer,
    module: CalibrationModule,
    model: Any,
    datamodule: CalibrationDataModule,
    captured: Captured,
    plan: PruningPlan,
    settings: PruneSettings,
    offloaded: bool,
) -> list[dict[str, Any]]:
    """Remove ``plan`` from ``model`` layer by layer with the repair (the refit of
    ``reconstruction.method``, the layer map of ``reconstruction.layers``, or both); ``offloaded``: the model
    is a copy in host memory whose layers run on the trainer's device one at a time."""
    method = _method(settings.reconstruction)
    if method is not None and trainer.is_global_zero:
        warn_if_few_tokens(datamodule.nsamples * datamodule.seqlen, model, module.adapter)
    return reconstruct_sequentially(
        model,
        module.adapter,
        captured,
        plan,
        method,
        settings.reconstruction.damping,
        settings.compensation,
        reduce_sum=sum_across_ranks(trainer),
        progress=trainer.is_global_zero,
        layer_map=settings.reconstruction.layers,
        device=trainer.strategy.root_device if offloaded else None,
    )


def _save(
    trainer: L.Trainer, model: Any, module: CalibrationModule, folder: Path, seconds: dict[str, float]
) -> None:
    """Rank 0 writes the pruned model (the only rank that holds it whole) while the others wait; a failure
    there fails every rank (the others would otherwise wait for it until the process group times out).
    Every rank calls this."""
    error = None
    if trainer.is_global_zero:
        start = time.perf_counter()
        try:
            assert model is not None
            save_pruned(model, module.tokenizer, folder, overwrite=True)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        seconds["save"] = time.perf_counter() - start
    error = trainer.strategy.broadcast(error)
    if error is not None:
        raise RuntimeError(f"rank 0 could not write the pruned model to {folder}: {error}")


def _remove_staged(trainer: L.Trainer, staged: Path) -> None:
    if trainer.is_global_zero and staged.exists():
        shutil.rmtree(staged, ignore_errors=True)


def _unsharded(module: CalibrationModule, keep: bool, seconds: dict[str, float]) -> Any:
    """``module.model``, made whole on the CPU if FSDP2 sharded it (collective; None where not kept)."""
    if module.model is None or not is_sharded(module.model):
        return module.model
    start = time.perf_counter()
    module.model = unsharded_copy(module.model, keep)  # the shards go: free their GPU memory
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    seconds["unshard"] = time.perf_counter() - start
    return module.model


def _method(reconstruction: ReconstructionSettings) -> Reconstruction | None:
    """The run's registered repair (``reconstruction.method``), or None for ``none``."""
    return None if reconstruction.method == "none" else reconstruction_named(reconstruction.method)
