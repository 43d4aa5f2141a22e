"""The Lightning Trainer with prunelight's stages as methods; each method is one CLI subcommand.

A method only gathers its arguments (the YAML sections LightningCLI fills) into the stage's typed settings
and calls one stage function of :mod:`prunelight.stages`; the stages stand on :mod:`prunelight.loops`, never
on this class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from prunelight.diagnostics.diagnosis import DiagnosisSettings
from prunelight.errors import ConfigError
from prunelight.evaluate.zeroshot import ZeroShotSettings
from prunelight.finetune.lora import LoraSettings
from prunelight.finetune.module import TrainingSettings
from prunelight.models.sharding import is_fully_sharded
from prunelight.ranking import RankingConfig
from prunelight.ranking.search import SearchSettings
from prunelight.stages.evaluation import run_evaluate
from prunelight.stages.finetune import run_finetune
from prunelight.stages.pipeline import run_pipeline
from prunelight.stages.prune import run_prune
from prunelight.stages.settings import (
    EvaluationSettings,
    FinetuneSettings,
    ImportanceSettings,
    PipelineSettings,
    PruneSettings,
    ReconstructionSettings,
    RecoverySettings,
    SparsitySettings,
)


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
        A failed evaluation removes the run folder it created."""
        return run_evaluate(self, model, datamodule, zero_shot)

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
        reconstruction: ReconstructionSettings = ReconstructionSettings(),  # noqa: B008
        search: SearchSettings = SearchSettings(),  # noqa: B008
    ) -> dict[str, Any]:
        """Calibrate, rank, remove, evaluate and save (docs/design.md: Data flow), into ``default_root_dir``.

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
            reconstruction: refit each layer's kept o/down columns after its cut (``method: lsq``).
            search: the allocation search of ``ranking.allocation: search`` (levels, generations, ...).
        """
        return run_prune(
            self,
            model,
            datamodule,
            PruneSettings(
                importance,
                ranking,
                compensation,
                evaluation,
                save_model,
                diagnosis,
                sparsity,
                reconstruction,
                search,
            ),
        )

    def finetune(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        recovery: RecoverySettings = RecoverySettings(),  # noqa: B008
        evaluation: EvaluationSettings | None = EvaluationSettings(),  # noqa: B008
        lora: LoraSettings | None = None,
        training: TrainingSettings | None = None,
        finetune_data: L.LightningDataModule | None = None,
    ) -> dict[str, Any]:
        """Evaluate, fine-tune with LoRA, merge, evaluate again and save, into ``default_root_dir``.

        The YAML sections are those of ``pipeline``: ``lora``, ``training`` and ``finetune_data`` (the
        command line fills ``finetune_data``; it has no ``data`` section and its ``model`` takes no ``lora``
        or ``training``). From Python, pass the data as ``datamodule`` (positional) or ``finetune_data``,
        not both.

        Args:
            model: a :class:`~prunelight.finetune.FinetuneModule`.
            datamodule: the fine-tuning data from Python (the command line's is ``finetune_data``).
            ckpt_path: a Lightning checkpoint of an earlier run of the same settings to resume from.
            recovery: overfitting monitor, early stopping, sparsity masks, what is saved.
            evaluation: perplexity (and zero-shot) before and after; None skips it.
            lora: rank, alpha, dropout and targets of the adapters; None keeps the module's own (the
                command line always gives its ``lora`` section, defaults included).
            training: optimiser, schedule and gradient checkpointing; None keeps the module's own.
            finetune_data: a :class:`~prunelight.finetune.LanguageModelingDataModule` (the command line's
                default) or :class:`~prunelight.finetune.InstructionDataModule`.
        """
        if datamodule is not None and finetune_data is not None:
            raise ConfigError("finetune takes its data once: datamodule (Python) or finetune_data, not both")
        data = finetune_data if finetune_data is not None else datamodule
        settings = FinetuneSettings(recovery, evaluation, ckpt_path, lora, training)
        return run_finetune(self, model, data, settings)

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
        reconstruction: ReconstructionSettings = ReconstructionSettings(),  # noqa: B008
        search: SearchSettings = SearchSettings(),  # noqa: B008
    ) -> dict[str, Any]:
        """prune -> evaluate -> fine-tune -> evaluate, into one results folder with one ``summary.md`` table
        (dense / pruned / recovered: parameters, perplexities, zero-shot accuracies).

        ``model``/``datamodule`` and the prune settings are those of ``prune``; ``lora``, ``training`` and
        ``recovery`` those of ``finetune``; ``finetune_data`` its data (default: a
        :class:`~prunelight.finetune.LanguageModelingDataModule` on WikiText-2 train). The fine-tuning runs
        on the pruned model in memory; ``trainer`` settings (``max_steps``, ``accumulate_grad_batches``,
        ``precision``, ``val_check_interval``) apply to it.
        """
        prune = PruneSettings(
            importance, ranking, compensation, evaluation, True, diagnosis, sparsity, reconstruction, search
        )
        settings = PipelineSettings(prune, lora, training, recovery, finetune_data)
        return run_pipeline(self, model, datamodule, settings)
