"""The Lightning Trainer with prunelight's stages as methods; each method is one CLI subcommand."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from prunelight.callbacks.evaluation_report import EvaluationReport
from prunelight.callbacks.importance import ImportanceCallback
from prunelight.diagnostics.diagnosis import DiagnosisSettings
from prunelight.evaluate.zeroshot import ZeroShotSettings
from prunelight.finetune.lora import LoraSettings
from prunelight.finetune.module import TrainingSettings
from prunelight.importance import Calibrated
from prunelight.models.sharding import is_fully_sharded, refuse_sharding
from prunelight.ranking import RankingConfig
from prunelight.stages.check import check_stage
from prunelight.stages.finetune import RecoverySettings
from prunelight.stages.settings import EvaluationSettings, ImportanceSettings, SparsitySettings


class PrunelightTrainer(L.Trainer):
    """A :class:`lightning.Trainer` that also knows prunelight's stages.

    ``fit``/``validate``/``test`` are Lightning's own. ``evaluate`` is the first of prunelight's stages;
    ``prune``, ``finetune`` and ``pipeline`` join it as methods of this class and as entries of
    :data:`prunelight.cli.SUBCOMMANDS`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if is_fully_sharded(self.strategy):
            # FSDP2 keeps its all-gather buffers across passes; made under inference mode they become
            # inference tensors, which a later pass cannot use (torch 2.11 fails already in evaluation with
            # one rank). Evaluation under FSDP2 runs in no_grad instead.
            loops = (self.validate_loop, self.test_loop, self.predict_loop, self.fit_loop.epoch_loop.val_loop)
            for loop in loops:
                loop.inference_mode = False
        # Lightning would put checkpoints under the logger's folder (tb/); a run's checkpoints are its own.
        for callback in self.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(Path(self.default_root_dir).absolute() / "checkpoints")

    def evaluate(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        zero_shot: ZeroShotSettings | None = None,
    ) -> dict[str, Any]:
        """Perplexity on every corpus of the datamodule, written to analysis/perplexity.json and TensorBoard;
        with ``zero_shot``, lm-eval's tasks on the same in-memory model (``analysis/zeroshot_model.json``).

        Runs ``test`` with an :class:`EvaluationReport` attached. If the evaluation fails, a run folder it
        created is removed again, so a failed run leaves no half-written results behind.
        """
        from prunelight.evaluate.zeroshot import check_tasks, write_zero_shot
        from prunelight.evaluate.zeroshot import zero_shot as run_zero_shot

        if zero_shot is not None:
            refuse_sharding(self.strategy, "zero-shot evaluation (lm-eval runs the model on rank 0 alone)")
            check_tasks(zero_shot)  # an unknown task or missing data fails before the model loads
        check_stage(self, model, datamodule)
        report = next((c for c in self.callbacks if isinstance(c, EvaluationReport)), None)
        with _removed_on_failure(Path(self.default_root_dir)):
            result = self.measure_perplexity(model, datamodule, report or EvaluationReport())
            if zero_shot is not None and self.is_global_zero:
                result["zero_shot"] = run_zero_shot(model.model, model.tokenizer, zero_shot)
                write_zero_shot(Path(self.default_root_dir), result["zero_shot"], "model")
            return result

    def measure_perplexity(
        self, model: L.LightningModule, datamodule: L.LightningDataModule | None, report: EvaluationReport
    ) -> dict[str, Any]:
        """``test`` a perplexity module with ``report`` attached for this run; return what it wrote."""
        with self._attached(report), kept_on_device(model):
            self.test(model, datamodule=datamodule, verbose=False)
        return report.report or {}

    def calibrate(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule,
        importance: ImportanceCallback | None = None,
    ) -> Calibrated:
        """Run the calibration windows through ``model`` with ``importance`` attached; return its scores.

        The test loop does the work (no optimiser, no DDP gradient sync; each rank sees its shard of the
        batches); inference mode is switched off for it so that gradient criteria can run backward.
        """
        attached = [c for c in self.callbacks if isinstance(c, ImportanceCallback)]
        importance = importance or (attached[0] if attached else ImportanceCallback())
        self.run_calibration(model, datamodule, importance)
        assert importance.result is not None
        return importance.result

    def run_calibration(
        self, model: L.LightningModule, datamodule: L.LightningDataModule, callback: L.Callback
    ) -> None:
        """The calibration windows through ``model`` with ``callback`` attached: it decides what runs
        (forward only or backward too) and what is kept. Inference mode is off so gradients can flow."""
        inference_mode, self.test_loop.inference_mode = self.test_loop.inference_mode, False
        try:
            with self._attached(callback), kept_on_device(model):
                self.test(model, datamodule=datamodule, verbose=False)
        finally:
            self.test_loop.inference_mode = inference_mode

    @contextmanager
    def _attached(self, callback: L.Callback) -> Iterator[None]:
        """``callback`` among the trainer's callbacks for the block only (unless it was there already)."""
        added = callback not in self.callbacks
        if added:
            self.callbacks.append(callback)
        try:
            yield
        finally:
            if added:
                self.callbacks.remove(callback)

    def prune(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        importance: ImportanceSettings = ImportanceSettings(),  # noqa: B008 (frozen settings, never mutated)
        ranking: RankingConfig = RankingConfig(),  # noqa: B008
        compensation: bool = False,
        evaluation: EvaluationSettings | None = EvaluationSettings(),  # noqa: B008
        save_model: bool = True,
        diagnosis: DiagnosisSettings = DiagnosisSettings(),  # noqa: B008
        sparsity: SparsitySettings | None = None,
    ) -> dict[str, Any]:
        """Calibrate, rank, remove, evaluate and save (DESIGN: Data flow), into ``default_root_dir``.

        Args:
            model: a :class:`~prunelight.calibration.CalibrationModule`.
            datamodule: a :class:`~prunelight.calibration.CalibrationDataModule`.
            importance: criterion and its options.
            ranking: target ratio, corrections (temperature, tau) and constraints.
            compensation: fold the calibration mean of removed o/down inputs into their bias (FLAP).
            evaluation: perplexity before and after; None skips it.
            save_model: write ``pruned_model/`` (safetensors and a config with every layer's sizes).
            diagnosis: thresholds of ``analysis/gradient_diagnosis.json``.
            sparsity: zero weights in a sparse pattern (unstructured, N:M, blocks, or the hybrid) instead of
                removing structures; None prunes structures.
        """
        from prunelight.stages.prune import run_prune
        from prunelight.stages.sparse import run_sparse

        check_stage(self, model, datamodule, ranking, evaluation, sparsity)
        with _rewritten(Path(self.default_root_dir)):
            if sparsity is not None:
                return run_sparse(
                    self,
                    model,
                    datamodule,
                    importance,
                    ranking,
                    sparsity,
                    compensation,
                    evaluation,
                    save_model,
                )
            return run_prune(
                self,
                model,
                datamodule,
                importance,
                ranking,
                compensation,
                evaluation,
                save_model,
                diagnosis,
            )

    def finetune(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        recovery: RecoverySettings = RecoverySettings(),  # noqa: B008
        evaluation: EvaluationSettings | None = EvaluationSettings(),  # noqa: B008
    ) -> dict[str, Any]:
        """Evaluate, fine-tune with LoRA, merge, evaluate again and save, into ``default_root_dir``.

        Args:
            model: a :class:`~prunelight.finetune.FinetuneModule` (LoRA settings and optimiser).
            datamodule: a :class:`~prunelight.finetune.LanguageModelingDataModule` or
                :class:`~prunelight.finetune.InstructionDataModule`.
            ckpt_path: a Lightning checkpoint of an earlier run of the same settings to resume from.
            recovery: overfitting monitor, early stopping, sparsity masks, what is saved.
            evaluation: perplexity (and zero-shot) before and after; None skips it.
        """
        from prunelight.reports.recovery import write_finetune_summary
        from prunelight.stages.finetune import run_finetune

        check_stage(self, model, datamodule, evaluation=evaluation)
        with _rewritten(Path(self.default_root_dir)):
            report = run_finetune(self, model, datamodule, recovery, evaluation, ckpt_path)
            if self.is_global_zero:
                write_finetune_summary(Path(self.default_root_dir), report)
            return report

    def pipeline(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        importance: ImportanceSettings = ImportanceSettings(),  # noqa: B008
        ranking: RankingConfig = RankingConfig(),  # noqa: B008
        compensation: bool = False,
        sparsity: SparsitySettings | None = None,
        evaluation: EvaluationSettings | None = EvaluationSettings(),  # noqa: B008
        diagnosis: DiagnosisSettings = DiagnosisSettings(),  # noqa: B008
        lora: LoraSettings = LoraSettings(),  # noqa: B008
        training: TrainingSettings = TrainingSettings(),  # noqa: B008
        recovery: RecoverySettings = RecoverySettings(),  # noqa: B008
        finetune_data: L.LightningDataModule | None = None,
    ) -> dict[str, Any]:
        """prune -> evaluate -> fine-tune -> evaluate, into one results folder with one ``summary.md`` table
        (dense / pruned / recovered: parameters, perplexities, zero-shot accuracies).

        ``model``/``datamodule`` and the prune settings are those of ``prune``; ``lora``, ``training`` and
        ``recovery`` those of ``finetune``; ``finetune_data`` its data (default: a
        :class:`~prunelight.finetune.LanguageModelingDataModule` on WikiText-2 train). The fine-tuning runs
        on the pruned model in memory; ``trainer`` settings (``max_steps``, ``accumulate_grad_batches``,
        ``precision``, ``val_check_interval``) apply to it.
        """
        from prunelight.stages.pipeline import run_pipeline

        check_stage(self, model, datamodule, ranking, evaluation, sparsity, finetune_data)
        with _rewritten(Path(self.default_root_dir)):
            return run_pipeline(
                self,
                model,
                datamodule,
                {
                    "importance": importance,
                    "ranking": ranking,
                    "compensation": compensation,
                    "sparsity": sparsity,
                    "evaluation": evaluation,
                    "diagnosis": diagnosis,
                },
                lora,
                training,
                recovery,
                finetune_data,
            )


@contextmanager
def kept_on_device(module: L.LightningModule) -> Iterator[None]:
    """Keep ``module`` on its device when the run ends.

    Lightning's strategy teardown moves the module to the CPU after every ``test``; prunelight runs several
    stages on one in-memory model (calibrate, evaluate, apply, evaluate again), and for a 7B model each
    round trip over PCIe costs seconds (measured: it made calibration 3.5x slower than a bare loop on an
    H100). The instance attribute shadows ``cpu()`` only while the block runs.
    """
    module.cpu = lambda: module  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.cpu


class _removed_on_failure:
    """Delete what the block created of ``folder`` and its parents, if the block raises.

    On the command line ``folder`` is a fresh staging folder that :mod:`prunelight.run_folder` removes
    itself; this is for the Python API, where ``default_root_dir`` is whatever the caller gave.
    """

    def __init__(self, folder: Path) -> None:
        folder = self.folder = folder.absolute()
        self.created: Path | None = None
        while not folder.exists():
            self.created, folder = folder, folder.parent

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is not None and self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
        return False


FINISHED_MARKS = ("summary.md", "analysis/recovery.json")
"""``summary.md`` (written last) says a folder holds a finished run; a pipeline's ``recovery.json`` puts its
table on top of any later ``summary.md``."""


class _rewritten(_removed_on_failure):
    """A stage writing into ``folder`` from the Python API: an earlier run's finished marks go first, so a
    rerun into the same ``default_root_dir`` that fails half-way never leaves an old summary over new files.
    (The command line never reuses a folder: each run has its own staging folder.)"""

    def __enter__(self) -> None:
        if self.created is None:
            for name in FINISHED_MARKS:
                (self.folder / name).unlink(missing_ok=True)
