"""The settings of every stage that are not a model or a datamodule, as YAML-friendly dataclasses.

The sections (``importance``, ``ranking``, ``sparsity``, ``evaluation``, ``recovery`` ...) are what the YAML
files hold; :class:`PruneSettings`, :class:`FinetuneSettings` and :class:`PipelineSettings` bundle them into
the one typed argument a stage function takes, so that the trainer's subcommand methods only build them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import lightning as L

from prunelight.apply.patterns import PatternName, SparsePattern, pattern_named
from prunelight.calibration.reconstruct import LayerMapName, ReconstructionName, reconstruction_named
from prunelight.callbacks.overfitting import MonitorSettings
from prunelight.data.corpora import CorpusSpec
from prunelight.diagnostics.diagnosis import DiagnosisSettings
from prunelight.errors import ConfigError
from prunelight.evaluate.zeroshot import ZeroShotSettings
from prunelight.finetune.distillation import DistillationSettings, Objective
from prunelight.finetune.lora import LoraSettings
from prunelight.finetune.module import TrainingSettings, TrainMode
from prunelight.importance.criteria import CRITERIA, CriterionName, sparse_criteria
from prunelight.ranking import RankingConfig
from prunelight.ranking.search import SearchSettings


@dataclass
class ImportanceSettings:
    """How groups are scored (docs/design.md: Importance criteria).

    Attributes:
        criterion: magnitude, taylor, taylor2, wanda, fluctuation or block_influence.
        aggregation: taylor/taylor2 only: ``batch`` sums |W * g| of each batch's gradient, ``sample`` runs one
            backward per window.
        magnitude_norm: 1 (sum of |W|) or 2 (L2 norm) for magnitude.
        gradient_statistics: with taylor/taylor2, keep per-layer gradient mean/std/norm/min/max for
            ``analysis/gradient_statistics.json`` and the diagnosis (its cost:
            benchmarks/diagnostics_overhead.py).
    """

    criterion: CriterionName = "taylor"
    aggregation: Literal["batch", "sample"] = "batch"
    magnitude_norm: Literal[1, 2] = 1
    gradient_statistics: bool = True


@dataclass
class EvaluationSettings:
    """Perplexity of the dense and the pruned model.

    Attributes:
        corpora: evaluation corpora (wikitext2, ptb, c4, c4_zh, local files).
        split: ``test`` as in the literature.
        seqlen: tokens per window; 2048 makes numbers comparable with the literature.
        max_windows: only the first N windows of each corpus (None: the whole split).
        batch_size: windows per forward pass.
        dense: also evaluate the model before pruning (the baseline of the summary); for ``finetune``, the
            model before fine-tuning.
        zero_shot: lm-eval tasks to run on the same model states (None: perplexity only).
    """

    corpora: list[str | CorpusSpec] = field(default_factory=lambda: ["wikitext2"])
    split: str = "test"
    seqlen: int = 2048
    max_windows: int | None = None
    batch_size: int = 1
    dense: bool = True
    zero_shot: ZeroShotSettings | None = None

    def __post_init__(self) -> None:
        from prunelight.data.corpora import canonical_split

        try:
            canonical_split(self.split)
        except ConfigError as err:
            raise ConfigError(f"evaluation.split: {err}") from None
        if self.seqlen < 2:
            raise ConfigError(f"evaluation.seqlen must be at least 2 tokens, got {self.seqlen}")
        if self.max_windows is not None and self.max_windows < 1:
            raise ConfigError(f"evaluation.max_windows must be at least 1 (or null), got {self.max_windows}")
        if self.batch_size < 1:
            raise ConfigError(f"evaluation.batch_size must be at least 1, got {self.batch_size}")


@dataclass
class SparsitySettings:
    """Mask pruning (docs/design.md: Sparse (mask) pruning); when given, ``prune`` zeroes weights instead of
    removing structures (``hybrid`` does both). The scores are ``importance.criterion``: magnitude, wanda or
    sparsegpt. Per-layer limits come from the ``ranking`` section (``min_rate``, ``max_rate``,
    ``first_layers``, ``first_layers_max_rate``, ``protected_layers``), read as bounds of a layer's sparsity.

    Attributes:
        pattern: ``unstructured``; ``nm`` (keep ``n`` of every ``m`` consecutive inputs); ``block`` (whole
            ``block`` tiles); ``hybrid`` (structures, then tiles, then single weights).
        sparsity: fraction of the prunable weights (the seven projections of every decoder layer) that goes;
            required, except for ``nm``, which fixes it at ``1 - n/m``.
        comparison: ``row`` (each output row loses the same fraction, as in Wanda) or ``layer`` (the whole
            matrix competes; SparseGPT's original choice within each column block).
        n: N of N:M.
        m: M of N:M.
        block: tile rows and columns (``block`` and ``hybrid``).
        calibration: ``sequential`` (layer by layer, each on the pruned outputs of the layers before it) or
            ``one_pass`` (every layer's statistics from the dense model at once).
        offload_inputs: ``sequential`` keeps the layer inputs in CPU memory.
        allocation: ``uniform`` (every layer gets ``sparsity``) or ``owl`` (outlier-weighted).
        owl_lambda: OWL's largest deviation from ``sparsity``.
        owl_m: OWL's outlier threshold, a multiple of the layer's mean score.
        structures_share: hybrid: fraction of the target removed as attention groups and MLP channels
            (ranked by the structured core with the ``ranking`` settings).
        blocks_share: hybrid: fraction of the target zeroed as whole tiles; single weights take the rest.
        sparsegpt_block_size: columns SparseGPT prunes and updates at a time.
        sparsegpt_damping: SparseGPT adds ``damping * mean(diag H)`` to the Hessian's diagonal.
        semi_structured: with ``nm`` 2:4 on CUDA, evaluate the pruned model with its layers converted to
            PyTorch's semi-structured sparse format (the saved checkpoint stays a normal one).
    """

    pattern: PatternName = "unstructured"
    sparsity: float | None = None
    comparison: Literal["row", "layer"] = "row"
    n: int = 2
    m: int = 4
    block: tuple[int, int] = (16, 16)
    calibration: Literal["sequential", "one_pass"] = "sequential"
    offload_inputs: bool = False
    allocation: Literal["uniform", "owl"] = "uniform"
    owl_lambda: float = 0.08
    owl_m: float = 5.0
    structures_share: float = 0.2
    blocks_share: float = 0.3
    sparsegpt_block_size: int = 128
    sparsegpt_damping: float = 0.01
    semi_structured: bool = False

    def __post_init__(self) -> None:
        self.block = tuple(int(b) for b in self.block)  # type: ignore[assignment]
        self.check()

    def check(self) -> None:
        from prunelight.ranking.patterns import check_block

        pattern_named(self.pattern).check(self)
        check_block(self.block)
        if self.comparison not in ("row", "layer"):
            raise ConfigError(f"comparison must be 'row' or 'layer', got {self.comparison!r}")
        if self.calibration not in ("sequential", "one_pass"):
            raise ConfigError(f"calibration must be 'sequential' or 'one_pass', got {self.calibration!r}")
        if self.allocation not in ("uniform", "owl"):
            raise ConfigError(f"allocation must be 'uniform' or 'owl', got {self.allocation!r}")
        shares = (self.structures_share, self.blocks_share)
        if any(not 0.0 <= s <= 1.0 for s in shares) or sum(shares) > 1.0:
            raise ConfigError(
                f"structures_share={shares[0]} and blocks_share={shares[1]} must be in [0, 1] and sum to at "
                "most 1 (single weights take the rest)"
            )
        if self.allocation == "owl":
            self._check_owl()
        if self.sparsegpt_block_size < 1 or self.sparsegpt_damping < 0:
            raise ConfigError("sparsegpt_block_size must be >= 1 and sparsegpt_damping >= 0")

    def _check_owl(self) -> None:
        from prunelight.ranking.sparsity import MAX_LAYER_SPARSITY

        if not 0.0 <= self.owl_lambda < 1.0:
            raise ConfigError(
                f"owl_lambda must be in [0, 1), got {self.owl_lambda} (OWL's paper uses 0.02 to 0.1)"
            )
        highest = self.target + self.owl_lambda
        if highest > MAX_LAYER_SPARSITY:
            raise ConfigError(
                f"sparsity {self.target} with allocation owl and owl_lambda {self.owl_lambda} gives layers "
                f"up to {highest:.3g} sparsity, but a layer keeps at least {1 - MAX_LAYER_SPARSITY:.0%} of "
                f"its weights; lower sparsity or owl_lambda (sparsity + owl_lambda <= {MAX_LAYER_SPARSITY}), "
                "or use allocation: uniform"
            )

    @property
    def sparse_pattern(self) -> SparsePattern:
        """The registered pattern object called :attr:`pattern` (what it needs, how it masks)."""
        return pattern_named(self.pattern)

    @property
    def target(self) -> float:
        """The overall sparsity: ``sparsity``, or what the pattern fixes (``1 - n/m`` for N:M)."""
        return self.sparse_pattern.target(self)

    def check_criterion(self, criterion: str) -> None:
        """Refuse a criterion that cannot prune single weights, or not with these settings."""
        scorer = CRITERIA.get(criterion)
        if scorer is None or not scorer.sparse:
            raise ConfigError(
                f"criterion {criterion!r} scores structures; sparse patterns take "
                f"{', '.join(sparse_criteria())} (set importance.criterion)"
            )
        scorer.check_sparse(self.pattern, self.calibration)


@dataclass
class RecoverySettings:
    """What the ``finetune`` stage does around Lightning's ``fit``.

    Attributes:
        monitor: thresholds of the overfitting monitor (warns; ``analysis/overfitting.json``).
        early_stopping_patience: stop when ``val/loss`` did not improve for this many validations (None: off).
        keep_sparsity: re-apply the zeros of a sparse model after every step and after the merge
            (:class:`~callbacks.mask.MaskCallback`); None decides from the weights (at least 5% exact zeros).
        save_adapter: write the LoRA adapter (``adapter/``).
        save_merged: write the merged model (``finetuned_model/``).
        objective: ``lm`` the next-token loss, ``kd`` distillation from the dense teacher, ``lm+kd`` both
            (:mod:`prunelight.finetune.distillation`; docs/finetune.md says when to use which).
        train: ``lora`` adapters on the frozen model, or ``full``: every weight of the pruned model.
        distillation: the teacher and the distillation loss (used by ``kd`` and ``lm+kd``).
    """

    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    early_stopping_patience: int | None = None
    keep_sparsity: bool | None = None
    save_adapter: bool = True
    save_merged: bool = True
    objective: Objective = "lm"
    train: TrainMode = "lora"
    distillation: DistillationSettings = field(default_factory=DistillationSettings)

    def __post_init__(self) -> None:
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(
                "early_stopping_patience must be at least 1 (or null for off), got "
                f"{self.early_stopping_patience}"
            )


@dataclass
class ReconstructionSettings:
    """Repair after a structured cut (docs/pruning.md: Reconstruction): each layer's kept o_proj and
    down_proj columns are refit, layer by layer, to the dense layer's outputs on the calibration windows;
    removed layers may be replaced by a linear map folded into the preceding down_proj (ReplaceMe).

    Attributes:
        method: ``none`` (the kept weights stay as they are) or ``lsq`` (least squares, ridge toward the
            original weights; with ``compensation`` or an existing bias, the bias is the fitted intercept).
        damping: ridge strength, a fraction of the mean diagonal of the inputs' second moment (of the layer
            map's ``X^T X`` too); raise it when a layer's inputs are (nearly) linearly dependent. The ``obs``
            criterion's greedy uses it too.
        obs_batch_fraction: the ``obs`` criterion's greedy on MLP channels removes this share of the live
            channels per step with one joint OBS update (at least one per step); 0, the default, is the exact
            one-at-a-time greedy. 1/64 takes a 7B down_proj's 11008 steps down to 426 (docs/pruning.md).
            Attention groups are always scored one at a time.
        offload_inputs: keep the captured layer inputs in CPU memory (calibration sets whose activations do
            not fit next to the model).
        layers: ``none`` (removed layers are dropped) or ``lsq`` (each span of removed layers is replaced by
            the least-squares linear map of the preceding kept layer's MLP output, folded into its
            down_proj; works with ``method: none`` too).
    """

    method: ReconstructionName = "none"
    damping: float = 0.01
    obs_batch_fraction: float = 0.0
    offload_inputs: bool = False
    layers: LayerMapName = "none"

    def __post_init__(self) -> None:
        if self.method != "none":
            reconstruction_named(self.method)
        if not self.damping >= 0:
            raise ConfigError(f"reconstruction.damping must be >= 0, got {self.damping}")
        if not 0 <= self.obs_batch_fraction <= 1:
            raise ConfigError(
                f"reconstruction.obs_batch_fraction must be in [0, 1] (0: one group per greedy step), "
                f"got {self.obs_batch_fraction}"
            )
        if self.layers not in ("none", "lsq"):
            raise ConfigError(f"reconstruction.layers must be one of none, lsq, got {self.layers!r}")

    @property
    def enabled(self) -> bool:
        """Whether the plan is applied by the sequential pass (a refit, a layer map or both)."""
        return self.method != "none" or self.layers != "none"


@dataclass(frozen=True)
class PruneSettings:
    """Everything the ``prune`` stage takes besides its model and calibration data.

    Attributes:
        importance: criterion and its options.
        ranking: target ratio, corrections (temperature, tau) and constraints; for a sparse run, the
            per-layer limits only.
        compensation: fold the calibration mean of removed o/down inputs into their bias (FLAP).
        evaluation: perplexity (and zero-shot) before and after; None skips it.
        save_model: write ``pruned_model/``.
        diagnosis: thresholds of ``analysis/gradient_diagnosis.json``.
        sparsity: zero weights in a sparse pattern instead of removing structures; None prunes structures.
        reconstruction: refit what each layer keeps after its cut (structured pruning only).
        search: the allocation search of ``ranking.allocation: search``.
    """

    importance: ImportanceSettings = field(default_factory=ImportanceSettings)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    compensation: bool = False
    evaluation: EvaluationSettings | None = field(default_factory=EvaluationSettings)
    save_model: bool = True
    diagnosis: DiagnosisSettings = field(default_factory=DiagnosisSettings)
    sparsity: SparsitySettings | None = None
    reconstruction: ReconstructionSettings = field(default_factory=ReconstructionSettings)
    search: SearchSettings = field(default_factory=SearchSettings)

    def __post_init__(self) -> None:
        if self.sparsity is not None and self.reconstruction.enabled:
            raise ConfigError(
                f"reconstruction (method={self.reconstruction.method}, layers={self.reconstruction.layers}) "
                "repairs structured pruning; a sparse run (a sparsity section) reconstructs with "
                "importance.criterion: sparsegpt instead; set reconstruction.method and "
                "reconstruction.layers to none or remove the sparsity section"
            )


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything the ``finetune`` stage takes besides its module and training data.

    Attributes:
        recovery: overfitting monitor, early stopping, sparsity masks, what is saved.
        evaluation: perplexity (and zero-shot) before and after; None skips it.
        ckpt_path: a Lightning checkpoint of an earlier run of the same settings to resume from.
        lora: rank, alpha, dropout and targets of the adapters; None keeps the module's own.
        training: optimiser, schedule and gradient checkpointing; None keeps the module's own.
    """

    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    evaluation: EvaluationSettings | None = field(default_factory=EvaluationSettings)
    ckpt_path: str | None = None
    lora: LoraSettings | None = None
    training: TrainingSettings | None = None


@dataclass(frozen=True)
class PipelineSettings:
    """The ``pipeline``: the prune settings, then the fine-tuning's (its LoRA, optimiser and data).

    Attributes:
        prune: the prune stage's settings (its ``evaluation`` measures all three rows).
        lora: rank, alpha, dropout and targets of the adapters.
        training: optimiser, schedule and gradient checkpointing.
        recovery: what the fine-tuning does around Lightning's ``fit``.
        finetune_data: the fine-tuning data (None: WikiText-2 train).
    """

    prune: PruneSettings = field(default_factory=PruneSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    finetune_data: L.LightningDataModule | None = None
