"""Zero-shot accuracy through lm-eval on the model as it is in memory, task data from the hub or local files.

The model is wrapped in lm-eval's ``HFLM`` as is: it is never saved and reloaded, so pruned classes whose
``model_type`` lm-eval does not know are evaluated like any causal LM, on their device and in their dtype.
With the hub out of reach, :mod:`prunelight.evaluate.local_tasks` turns the files under the data root into
the rows lm-eval's task configs expect and points those configs at them; prompts, choices and metrics stay
lm-eval's own, so the numbers are comparable with published lm-eval results (on the same examples).
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunelight.data.root import data_root
from prunelight.errors import ConfigError, DataError
from prunelight.evaluate import local_tasks
from prunelight.hub import hub_status
from prunelight.io import write_json

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

log = logging.getLogger(__name__)

INSTALL_HINT = "zero-shot evaluation needs lm-eval: pip install 'prunelight[eval]'"
FEWSHOT_SEED = 1234
"""lm-eval's default ``fewshot_random_seed``: the same shots as its command line picks."""
METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


@dataclass
class ZeroShotSettings:
    """Which lm-eval tasks to run and where their data comes from.

    Attributes:
        tasks: lm-eval task names (groups and tags work with the hub; local copies exist for boolq, piqa,
            hellaswag, winogrande, arc_easy, arc_challenge and openbookqa).
        limit: only the first N examples of each task (None: all). Scores on a prefix are not comparable
            with published full-split numbers.
        batch_size: requests (context + one choice) per forward pass.
        num_fewshot: examples shown before each question. The hub copies draw them from ``train``; local
            copies have none, so they come from the local validation split (ARC, OpenBookQA) or from the
            evaluated split itself, never the question being asked.
        source: ``hub``, ``local`` (files under ``data_root``) or ``auto``: the hub when it is reachable
            (:mod:`prunelight.hub` decides, once per run), else the local files; a hub that answers but
            fails to serve the tasks also falls back to the local files, as named corpora do. The result
            says which was used and why (``settings.source_used``, ``settings.source_reason``).
        data_root: where the local files are (default ``$PRUNELIGHT_DATA``, else
            ``~/.cache/prunelight/data``).
        cache_dir: where converted local files are kept (default ``~/.cache/prunelight/lm_eval``).
        log_samples: also return every example's per-choice log-likelihoods and the answer taken, under
            ``result["samples"][task]`` (large: off by default).
    """

    tasks: list[str] = field(default_factory=lambda: ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy"])
    limit: int | None = None
    batch_size: int = 8
    num_fewshot: int = 0
    source: Literal["auto", "hub", "local"] = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    log_samples: bool = False


@dataclass
class _Plan:
    """Everything checked and resolved before the model is touched."""

    tasks: list[str]
    source: Literal["hub", "local"]
    reason: str
    """Why this source: the setting, or the hub decision (for the summary)."""
    root: Path
    manager: TaskManager
    fallback: bool
    """``auto`` chose the hub and every task has a local copy: a hub failure falls back to it."""


# ---------------------------------------------------------------------------------------------- checks


def _require_lm_eval() -> None:
    """lm-eval is an optional extra: say how to get it instead of failing on an import deep inside."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as err:
        raise ConfigError(INSTALL_HINT) from err


def _tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


@functools.lru_cache(maxsize=1)
def _full_manager() -> TaskManager:
    """lm-eval's index of every task it ships: ~10 s to build on a slow CPU, so once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


@functools.lru_cache(maxsize=8)
def _scoped_manager(folders: tuple[str, ...]) -> TaskManager:
    """An index of only the folders holding the requested tasks' yamls: milliseconds instead of seconds."""
    from lm_eval.tasks import TaskManager

    root = _tasks_dir()
    return TaskManager(include_defaults=False, include_path=[str(root / f) for f in folders])


def _manager_for(tasks: list[str]) -> TaskManager:
    """The small index when every task's folder is known and the task is found there, else the full one."""
    if all(t in local_tasks.LOCAL_TASKS for t in tasks):
        folders = tuple(sorted({local_tasks.LOCAL_TASKS[t].yaml_dir for t in tasks}))
        if all((_tasks_dir() / f).is_dir() for f in folders):
            scoped = _scoped_manager(folders)
            if all(t in scoped.all_subtasks for t in tasks):
                return scoped
    return _full_manager()


def _whole(value: Any) -> bool:
    """An int that is not a bool (YAML's ``yes`` must not pass for a count of 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_numbers(settings: ZeroShotSettings) -> None:
    if not isinstance(settings.tasks, list | tuple) or not settings.tasks:
        raise ConfigError(
            f"zero_shot.tasks must be a non-empty list of lm-eval task names, got {settings.tasks!r}"
        )
    if not all(isinstance(t, str) and t for t in settings.tasks):
        raise ConfigError(f"zero_shot.tasks must hold task names (strings), got {settings.tasks!r}")
    if settings.limit is not None and (not _whole(settings.limit) or settings.limit < 1):
        raise ConfigError(
            f"zero_shot.limit must be a whole number >= 1 or None (all examples), got {settings.limit!r}"
        )
    if not _whole(settings.batch_size) or settings.batch_size < 1:
        raise ConfigError(f"zero_shot.batch_size must be a whole number >= 1, got {settings.batch_size!r}")
    if not _whole(settings.num_fewshot) or settings.num_fewshot < 0:
        raise ConfigError(f"zero_shot.num_fewshot must be a whole number >= 0, got {settings.num_fewshot!r}")
    if settings.source not in ("auto", "hub", "local"):
        raise ConfigError(f"zero_shot.source must be auto, hub or local, got {settings.source!r}")


def _resolve_source(settings: ZeroShotSettings) -> tuple[Literal["hub", "local"], str]:
    """The source and why: ``auto`` follows the process-wide hub decision, like the named corpora."""
    if settings.source != "auto":
        return settings.source, f"zero_shot.source is {settings.source}"
    hub = hub_status()
    if hub.reachable:
        return "hub", hub.describe()
    return "local", f"{hub.describe()}, so the local copies under the data root were used"


def _plan(settings: ZeroShotSettings) -> _Plan:
    """Every check that can fail on the settings or the data, in the order a user would fix them."""
    _check_numbers(settings)
    _require_lm_eval()
    tasks = list(dict.fromkeys(settings.tasks))  # lm-eval refuses a task listed twice
    manager = _manager_for(tasks)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        known = _full_manager().all_tasks
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hints.append(f"{name!r} (did you mean {', '.join(close)}?)" if close else repr(name))
        raise ConfigError(
            f"lm-eval does not know the task(s) {', '.join(hints)}; fix zero_shot.tasks "
            "(python -m lm_eval ls tasks lists them)"
        )
    source, reason = _resolve_source(settings)
    root = data_root(settings.data_root)
    hub_only = [t for t in tasks if t not in local_tasks.LOCAL_TASKS]
    missing = [str(p) for t in tasks if t not in hub_only for p in local_tasks.missing_files(t, root)]
    if source == "local":
        why = f"{hub_status().describe()}, so " if settings.source == "auto" else ""
        if hub_only:
            raise DataError(
                f"{why}zero-shot tasks need local copies, but {', '.join(hub_only)} has none: only the "
                f"hub works for it (local copies exist for {', '.join(local_tasks.LOCAL_TASKS)}); allow the "
                "hub (unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE, zero_shot.source: hub) or drop the task"
            )
        if missing:
            raise DataError(
                f"{why}zero-shot data is read from local files, but {', '.join(missing)} not found; "
                "set PRUNELIGHT_DATA (or zero_shot.data_root) to the folder that holds them (see "
                "docs/data.md), or allow the hub"
            )
    fallback = settings.source == "auto" and not hub_only and not missing
    return _Plan(tasks, source, reason, root, manager, fallback)


def _cache_dir(settings: ZeroShotSettings) -> Path | None:
    return Path(settings.cache_dir).expanduser() if settings.cache_dir else None


def check_tasks(settings: ZeroShotSettings) -> None:
    """Fail on a bad setting, an unknown task or missing local data before any model work starts.

    Local files are also converted here (and cached), so a malformed file stops a run at its start
    rather than after hours of pruning.
    """
    plan = _plan(settings)
    if plan.source == "local":
        for name in plan.tasks:
            local_tasks.prepare(name, plan.root, _cache_dir(settings))


# ---------------------------------------------------------------------------------------------- tasks


def _registered_config(manager: TaskManager, name: str) -> dict[str, Any]:
    """The task's yaml as lm-eval's own factory reads it (includes followed, ``!function`` resolved).

    lm-eval 0.4.x builds a dict spec passed to ``TaskManager.load`` as a task of its own instead of
    laying it over the registered yaml, so the merge is done here with lm-eval's yaml loader.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index[name]
    if entry.yaml_path is None:
        raise DataError(f"lm-eval's {name} is defined in Python, not yaml; only the hub works for it")
    return dict(load_yaml(entry.yaml_path, resolve_func=True, recursive=True))


def _load_tasks(plan: _Plan, settings: ZeroShotSettings) -> tuple[dict[str, Any], dict[str, str]]:
    """lm-eval's loaded-task dict (with the datasets read) and each leaf task's data source."""
    if plan.source == "local":
        return _load_local_tasks(plan, settings)
    try:
        loaded = plan.manager.load(list(plan.tasks))
    except (OSError, ConnectionError) as err:  # datasets' offline/not-found/connection errors are OSErrors
        failure = f"the hub failed ({type(err).__name__}: {str(err)[:200]})"
        if plan.fallback:
            log.warning("zero-shot tasks: %s; reading the local copies under %s", failure, plan.root)
            plan.source = "local"
            plan.reason = f"{failure}, so the local copies under the data root were used"
            return _load_local_tasks(plan, settings)
        raise DataError(
            f"lm-eval could not read {', '.join(plan.tasks)} from the hub ({type(err).__name__}: {err}); "
            "check the connection, or use zero_shot.source: local with PRUNELIGHT_DATA set"
        ) from err
    sources = {name: f"hub:{task.config.dataset_path}" for name, task in loaded["tasks"].items()}
    return loaded, sources


def _load_local_tasks(plan: _Plan, settings: ZeroShotSettings) -> tuple[dict[str, Any], dict[str, str]]:
    """lm-eval's own task configs pointed at the converted local files."""
    specs: list[str | dict[str, Any]] = []
    sources: dict[str, str] = {}
    for name in plan.tasks:
        splits = local_tasks.prepare(name, plan.root, _cache_dir(settings))
        config = _registered_config(plan.manager, name) | local_tasks.task_override(name, splits)
        for key in ("tag", "group", "include"):
            config.pop(key, None)
        specs.append(config)
        sources[name] = local_tasks.source_label(name, plan.root)
    return plan.manager.load(specs), sources


def _set_fewshot(loaded: dict[str, Any], num_fewshot: int) -> None:
    """What lm-eval's ``simple_evaluate`` does with ``num_fewshot`` (a yaml that fixes 0 keeps it)."""
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)


# ---------------------------------------------------------------------------------------------- model


def _untie_guard(model: PreTrainedModel) -> dict[str, Any]:
    """Every parameter object by name: HFLM calls ``tie_weights()``, which would tie an lm_head whose
    config says "tied" but whose weights were made different; the evaluated model must stay as given."""
    return dict(model.named_parameters(remove_duplicate=False))


def _restore_parameters(model: PreTrainedModel, before: dict[str, Any]) -> None:
    for name, param in before.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        if getattr(owner, leaf) is not param:
            log.warning("lm-eval re-tied %s to another weight; put the model's own back", name)
            setattr(owner, leaf, param)


def _wrap(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int) -> Any:
    """lm-eval's HFLM around the model as it is (no .to(), no reload); the tokenizer is a copy because
    HFLM may give it a pad token."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=model,
        tokenizer=copy.deepcopy(tokenizer),
        batch_size=batch_size,
        device=str(model.device),
        backend="causal",  # pruned classes have a model_type lm-eval cannot look up
    )


def _number(value: Any) -> float | None:
    """lm-eval writes "N/A" for a standard error it cannot compute (one example)."""
    return float(value) if isinstance(value, int | float) else None


def _task_result(metrics: dict[str, Any], examples: int, source: str, note: str) -> dict[str, Any]:
    out: dict[str, Any] = {m: _number(metrics.get(f"{m},none")) for m in METRICS}
    out["examples"] = examples
    out["source"] = source
    if note:
        out["note"] = note
    others = {k: v for k, v in metrics.items() if "," in k and k.split(",")[0] not in METRICS}
    if others:
        out["metrics"] = others
    return out


def _sample_record(sample: dict[str, Any]) -> dict[str, Any]:
    """One example: the log-likelihood of each choice (multiple choice; other task types keep their raw
    responses), the index taken, the gold target, and what the metrics made of it."""
    record: dict[str, Any] = {"doc_id": sample["doc_id"], "target": sample["target"]}
    responses = sample["filtered_resps"]
    if all(isinstance(r, tuple | list) and isinstance(r[0], int | float) for r in responses):
        scores = [float(r[0]) for r in responses]
        record["loglikelihoods"] = scores
        record["chosen"] = max(range(len(scores)), key=scores.__getitem__) if scores else None
    else:
        record["responses"] = responses
    record.update({m: sample[m] for m in sample["metrics"] if m in sample})
    return record


def zero_shot(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: ZeroShotSettings
) -> dict[str, Any]:
    """Run the tasks on the model as it is in memory (wrapped in lm-eval's HFLM, never saved and reloaded).

    Returns ``{"tasks": {task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr" (None where the task
    has no acc_norm), "examples", "source" ("local:<file>" or "hub:<dataset id>")}}, "mean_acc",
    "settings", "seconds"}`` (and ``"samples"`` with ``settings.log_samples``). The model's device, dtype,
    parameters and train/eval mode (per module) are as before when it returns.
    """
    start = time.perf_counter()
    plan = _plan(settings)
    loaded, sources = _load_tasks(plan, settings)
    _set_fewshot(loaded, settings.num_fewshot)

    from lm_eval.evaluator import evaluate

    modes = {module: module.training for module in model.modules()}
    parameters = _untie_guard(model)
    try:
        lm = _wrap(model, tokenizer, settings.batch_size)
        _restore_parameters(model, parameters)
        raw = evaluate(lm=lm, task_dict=loaded, limit=settings.limit, log_samples=settings.log_samples)
    finally:
        _restore_parameters(model, parameters)
        for module, training in modes.items():
            module.training = training

    tasks: dict[str, dict[str, Any]] = {}
    for name in loaded["tasks"]:
        spec = local_tasks.LOCAL_TASKS.get(name)
        note = spec.notes if spec and plan.source == "local" else ""
        examples = int(raw["n-samples"][name]["effective"])
        tasks[name] = _task_result(raw["results"][name], examples, sources.get(name, "?"), note)
    accs = [r["acc"] for r in tasks.values() if r["acc"] is not None]
    result: dict[str, Any] = {
        "tasks": tasks,
        "mean_acc": sum(accs) / len(accs) if accs else None,
        "settings": {
            **asdict(settings),
            "source_used": plan.source,
            "source_reason": plan.reason,
            "data_root_used": str(plan.root),
        },
        "seconds": time.perf_counter() - start,
    }
    if settings.log_samples:
        result["samples"] = {t: [_sample_record(s) for s in raw["samples"][t]] for t in loaded["tasks"]}
    return result


# ---------------------------------------------------------------------------------------------- output


def write_zero_shot(run_dir: Path, result: dict[str, Any], which: str, step: int = 0) -> Path:
    """``analysis/zeroshot_<which>.json`` of the run, and TensorBoard scalars ``zeroshot/<which>/<task>/acc``
    (and acc_norm, the stderrs, ``zeroshot/<which>/mean_acc``) under ``run_dir/tb/zeroshot``."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = Path(run_dir)
    path = write_json(run_dir / "analysis" / f"zeroshot_{which}.json", result)
    writer = SummaryWriter(log_dir=str(run_dir / "tb" / "zeroshot"))
    try:
        for task, values in result["tasks"].items():
            for metric in METRICS:
                if values.get(metric) is not None:
                    writer.add_scalar(f"zeroshot/{which}/{task}/{metric}", values[metric], step)
        if result.get("mean_acc") is not None:
            writer.add_scalar(f"zeroshot/{which}/mean_acc", result["mean_acc"], step)
    finally:
        writer.close()
    return path
