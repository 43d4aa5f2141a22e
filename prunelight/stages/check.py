"""The ``check`` step every stage runs first: its settings against the model's config, before anything costly.

The model's config (config.json, read when the model module was built) fixes the number of decoder layers,
the context length and every projection's shape; the settings name layers, window lengths, splits, N:M
groups and tiles. Each mismatch is a :class:`ConfigError` naming the key, raised before the results folder
exists, the weights load, the calibration runs or the dense model is evaluated. Checks that need no model
live with the settings themselves (``__post_init__``); this module holds those that need the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prunelight.data.corpora import NAMED, CorpusSpec, as_spec, canonical_split, unavailable
from prunelight.errors import ConfigError, DataError
from prunelight.io import check_creatable
from prunelight.models.sharding import refuse_sharding
from prunelight.ranking import RankingConfig
from prunelight.ranking.search import SearchSettings

if TYPE_CHECKING:
    from prunelight.stages.settings import EvaluationSettings, SparsitySettings

LENGTHS = ("seqlen", "block_size", "max_length")
"""The attribute that holds a datamodule's tokens per sequence (perplexity/calibration, LM, instruction)."""


def check_stage(
    trainer: Any,
    module: Any,
    datamodule: Any = None,
    ranking: RankingConfig | None = None,
    evaluation: EvaluationSettings | None = None,
    sparsity: SparsitySettings | None = None,
    finetune_data: Any = None,
    search: SearchSettings | None = None,
) -> None:
    """Every check of a stage's settings that the model's config allows, in one place; cheap (no weights).
    The settings first, then whether the data can be found (so a typo is named before a missing file)."""
    check_creatable(trainer.default_root_dir, "results_root (or run_dir)")
    for key, data in (("data", datamodule), ("finetune_data", finetune_data)):
        if data is not None:
            check_datamodule_splits(data, key)
    if evaluation is not None:
        check_splits(evaluation.corpora, evaluation.split, "evaluation")
    if sparsity is not None and ranking is not None:
        check_sparse_ratio(ranking, sparsity)
    if sparsity is None and ranking is not None and ranking.allocation == "search":
        check_search(trainer, datamodule, search or SearchSettings())
    config = getattr(module, "config", None)
    if config is not None:
        check_against_config(module, config, datamodule, ranking, evaluation, sparsity, finetune_data, search)
    for key, data in (("data", datamodule), ("finetune_data", finetune_data)):
        if data is not None:
            check_datamodule_available(data, key)
    if evaluation is not None:
        corpora = [(f"corpora[{i}]", c) for i, c in enumerate(evaluation.corpora)]
        check_available(corpora, evaluation.split, "evaluation")


def check_search(trainer: Any, datamodule: Any, search: SearchSettings) -> None:
    """The allocation search needs enough calibration windows, and whole models (one process or DDP)."""
    refuse_sharding(getattr(trainer, "strategy", None), "ranking.allocation: search")
    nsamples = getattr(datamodule, "nsamples", None)
    if nsamples is not None:
        search.check_windows(nsamples)


def check_against_config(
    module: Any,
    config: Any,
    datamodule: Any,
    ranking: RankingConfig | None,
    evaluation: EvaluationSettings | None,
    sparsity: SparsitySettings | None,
    finetune_data: Any,
    search: SearchSettings | None = None,
) -> None:
    """Lengths against the context, layer settings against the layer count, sparse shapes."""
    name = getattr(getattr(module, "spec", None), "path", "the model")
    context = getattr(config, "max_position_embeddings", None)
    for key, data in (("data", datamodule), ("finetune_data", finetune_data)):
        attribute = next((a for a in LENGTHS if isinstance(getattr(data, a, None), int)), None)
        if data is not None and attribute is not None:
            check_length(getattr(data, attribute), context, f"{key}.{attribute}", name)
    if evaluation is not None:
        check_length(evaluation.seqlen, context, "evaluation.seqlen", name)
    layers = getattr(config, "num_hidden_layers", None)
    if ranking is not None and layers is not None:
        check_layers(ranking, layers, name)
    if sparsity is not None and ranking is not None:
        check_sparse(module, sparsity, ranking)
    elif ranking is not None and ranking.remove_layers == 0:
        check_reachable(module, ranking, search)


def check_reachable(module: Any, ranking: RankingConfig, search: SearchSettings | None = None) -> None:
    """The ranking's target within its per-layer limits, ranked on placeholder scores of the model's shapes
    (:func:`~prunelight.importance.groups.structure_table`): a target the limits cannot reach is the ranking's
    own one-line error, before the calibration. Layer removal is left to the ranking: which layers go depends
    on the measured block influence."""
    from prunelight.importance.groups import structure_table
    from prunelight.ranking import rank
    from prunelight.save.layers import recorded_layer_sizes, resize_to_recorded

    model = _meta_model(module)
    if model is None or getattr(module, "adapter", None) is None:
        return
    if getattr(module, "model", None) is None and recorded_layer_sizes(model.config) is not None:
        resize_to_recorded(model)  # a pruned checkpoint: its per-layer sizes, not the config's uniform ones
    table = structure_table(model, module.adapter)
    result = rank(table, ranking)
    if ranking.allocation == "search":
        check_ladders(table, result, ranking, search or SearchSettings())


def check_ladders(table: Any, result: Any, ranking: RankingConfig, search: SearchSettings) -> None:
    """Each kind's ladder of ``search.levels`` must hold its share of the target (``search.budget: joint``:
    the ladders together must hold the whole target)."""
    from prunelight.calibration.search_fitness import search_space

    ladders, targets = search_space(table, result, ranking, search.levels)
    reach = {kind: (ladder.most(), targets[kind]) for kind, ladder in ladders.items()}
    if search.budget == "joint":  # one total: the kinds together
        reach = {"": (sum(m for m, _ in reach.values()), sum(t for _, t in reach.values()))}
    for kind, (most, target) in reach.items():
        if most < target:
            top = (search.levels - 1) / search.levels
            what = f"{kind} " if kind else ""
            raise ConfigError(
                f"search.levels {search.levels} lets a layer lose at most {top:.0%} of its {what}groups "
                f"(and max_rate limits it further): {most:,} parameters, fewer than the {what}target "
                f"{target:,}; raise search.levels or ranking.max_rate, or lower ranking.ratio"
            )


def check_sparse_ratio(ranking: RankingConfig, sparsity: SparsitySettings) -> None:
    """A sparse run's target is ``sparsity.sparsity``; a ``ranking.ratio`` it would ignore is refused.

    The ranking section of a sparse run supplies only the per-layer limits (and, for ``hybrid``, the
    corrections of its structured tier, whose size is ``structures_share``). ``ratio`` is compared with its
    default because that is all a settings object can tell: the default itself is indistinguishable from
    "not given".
    """
    default = RankingConfig.ratio
    if ranking.ratio != default:
        raise ConfigError(
            f"ranking.ratio={ranking.ratio} is not used by a sparse run (a sparsity section): its target is "
            "sparsity.sparsity (hybrid: structures_share of it goes as structures); remove ranking.ratio "
            "or the sparsity section"
        )


def check_length(length: int, context: int | None, key: str, name: str) -> None:
    if context is not None and length > context:
        raise ConfigError(
            f"{key}: {length} tokens is longer than the context of {name} ({context} tokens, "
            f"max_position_embeddings in config.json); lower {key} to at most {context}"
        )


def check_layers(ranking: RankingConfig, layers: int, name: str) -> None:
    """``protected_layers``, ``first_layers`` and ``remove_layers`` against the model's decoder layers."""
    bad = [i for i in ranking.protected_layers if not -layers <= i < layers]
    if bad:
        raise ConfigError(
            f"ranking.protected_layers: {bad[0]} is not a layer of {name}, which has {layers} layers "
            f"(0 to {layers - 1}, or -1 to -{layers} from the end)"
        )
    if ranking.first_layers > layers:
        raise ConfigError(
            f"ranking.first_layers: {ranking.first_layers}, but {name} has {layers} layers; "
            f"give at most {layers}"
        )
    protected = {i % layers for i in ranking.protected_layers}
    if ranking.remove_layers and ranking.remove_layers > min(layers - 1, layers - len(protected)):
        raise ConfigError(
            f"ranking.remove_layers: {ranking.remove_layers}, but only "
            f"{min(layers - 1, layers - len(protected))} of the {layers} layers of {name} can go (one "
            "stays, protected_layers never go); lower remove_layers"
        )


def check_datamodule_splits(data: Any, key: str) -> None:
    """The split names of a datamodule's corpora (a typo, or a split the corpus does not have)."""
    if hasattr(data, "specs") and hasattr(data, "split"):  # calibration and perplexity datamodules
        check_splits(data.specs, data.split, key)
    elif hasattr(data, "spec") and hasattr(data, "train_split"):  # language modelling
        for split_key in ("train_split", "val_split"):
            check_splits([data.spec], getattr(data, split_key), key, split_key)


def check_available(corpora: list[Any], split: str, key: str, root: str | None = None) -> None:
    """Each corpus can be found without reading it (a local file that exists; with the hub unreachable, a
    local copy of a named corpus), so a missing evaluation corpus stops the run before the calibration,
    not after it. ``corpora``: ``(key, corpus)`` pairs."""
    for where, corpus in corpora:
        why = unavailable(corpus, split, root)
        if why is not None:
            raise DataError(f"{key}.{where}: {why}")


def check_datamodule_available(data: Any, key: str) -> None:
    root = getattr(data, "data_root", None)
    if hasattr(data, "specs") and hasattr(data, "split"):
        check_available([(f"corpora[{i}]", s) for i, s in enumerate(data.specs)], data.split, key, root)
    elif hasattr(data, "spec") and hasattr(data, "train_split"):
        for split_key in ("train_split", "val_split"):
            check_available([("corpus", data.spec)], getattr(data, split_key), key, root)


def check_splits(
    corpora: list[str | CorpusSpec] | list[CorpusSpec],
    split: str,
    key: str,
    split_key: str = "split",
    root: str | None = None,
) -> None:
    """Each corpus's split is a split name, and one the corpus has."""
    for index, corpus in enumerate(corpora):
        spec = as_spec(corpus)
        where = f"{key}.corpora[{index}].split" if spec.split else f"{key}.{split_key}"
        try:
            name = canonical_split(spec.split or split)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        named = NAMED.get(spec.name)
        if named is None:
            continue
        local = named.local_split(name)
        if name not in named.hub_splits and local not in named.local:
            has = sorted(set(named.hub_splits) | set(named.local))
            raise ConfigError(
                f"{where}: corpus {spec.name!r} has no {name!r} split (it has {', '.join(has)}); "
                f"set {where} to one of them"
            )


def check_sparse(module: Any, sparsity: SparsitySettings, ranking: RankingConfig) -> None:
    """The target within the ranking's per-layer limits; N:M groups and whole tiles dividing every
    projection they prune (a layer the limits leave unpruned is skipped, as the stage skips it)."""
    from prunelight.models.projections import PROJECTIONS
    from prunelight.ranking.patterns import check_nm
    from prunelight.ranking.rank import layer_constraints
    from prunelight.ranking.sparsity import allocate_sparsity, layer_bounds

    model = _meta_model(module)
    if model is None:
        return
    layers = module.adapter.decoder_layers(model)
    bounds = layer_bounds(layer_constraints(ranking, len(layers)), len(layers))
    if sparsity.pattern in ("unstructured", "block"):  # nm fixes every layer; hybrid's tiers differ
        sizes = [
            sum(getattr(module.adapter.modules(layer), p).weight.numel() for p in PROJECTIONS)
            for layer in layers
        ]
        allocate_sparsity([sparsity.target] * len(sizes), sizes, sparsity.target, bounds)
    if sparsity.pattern not in ("nm", "block"):
        return
    rows, cols = sparsity.block
    for index, layer in enumerate(layers):
        if bounds[index][1] == 0:
            continue
        modules = module.adapter.modules(layer)
        for projection in PROJECTIONS:
            out, inp = getattr(modules, projection).weight.shape
            label = f"layer {index} {projection}_proj ({out}x{inp})"
            if sparsity.pattern == "nm":
                try:
                    check_nm(sparsity.n, sparsity.m, inp, label)
                except ConfigError as err:
                    raise ConfigError(f"sparsity.m: {err}") from None
            elif out % rows or inp % cols:
                raise ConfigError(
                    f"sparsity.block: {rows}x{cols} tiles do not divide {label}; use a tile size that "
                    "divides every pruned weight, protect that layer (ranking.protected_layers), or use the "
                    "hybrid pattern, which leaves partial edge tiles to single weights"
                )


def _meta_model(module: Any) -> Any:
    """The module's model if loaded, else its architecture on the meta device (shapes only, no memory)."""
    if getattr(module, "model", None) is not None:
        return module.model
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(module.config)
    except Exception:  # an architecture transformers cannot build from its config alone: the stage checks
        return None
