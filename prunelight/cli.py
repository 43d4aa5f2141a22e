"""``prunelight`` / ``python train.py``: one LightningCLI whose subcommands are the Trainer's stages.

Each subcommand has default model and data classes (:data:`SUBCOMMANDS`), so a YAML needs no
``class_path``; results land in ``<results_root>/<model>/<experiment>/`` with TensorBoard under ``tb/``,
written into a staging folder renamed when the run completes (:mod:`prunelight.run_folder`).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from argparse import ArgumentError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from prunelight.errors import PrunelightError, raised_message_in
from prunelight.finetune.lora import LoraSettings
from prunelight.finetune.module import TrainingSettings
from prunelight.run_folder import RunFolder
from prunelight.trainer import PrunelightTrainer


@dataclass(frozen=True)
class Subcommand:
    """Default classes of a subcommand, and the Trainer-method arguments the CLI fills itself."""

    model: str | None
    data: str | None
    skip: frozenset[str] = frozenset({"model", "datamodule"})
    """Trainer-method arguments the CLI fills itself; also ``data`` (no ``data`` section: the subcommand's
    data is a section of its own) and ``model.<init argument>`` (not a key of the ``model`` section: the
    subcommand takes it as a top-level section), so the old place is not parsed at all."""
    classes: tuple[tuple[str, str], ...] = ()
    """Other class-typed arguments of the method and their default classes (so YAML needs no class_path)."""
    sections: tuple[tuple[str, type], ...] = ()
    """Settings arguments whose method default is None (the module keeps its own, for Python callers) and
    whose command-line default is the settings class's defaults, as in the subcommands where they are
    required."""

    def method_skip(self) -> set[str]:
        return {name for name in self.skip if name != "data" and not name.startswith("model.")}

    def model_skip(self) -> set[str]:
        return {name.split(".", 1)[1] for name in self.skip if name.startswith("model.")}


_PERPLEXITY = ("prunelight.evaluate.PerplexityModule", "prunelight.data.datamodule.PerplexityDataModule")
_FINETUNE = ("prunelight.finetune.FinetuneModule", "prunelight.finetune.LanguageModelingDataModule")
_CALIBRATION = ("prunelight.calibration.CalibrationModule", "prunelight.calibration.CalibrationDataModule")
_FINETUNE_SECTIONS = frozenset({"model", "datamodule", "data", "model.lora", "model.training"})
"""finetune: ``lora``, ``training`` and ``finetune_data`` are top-level sections, as in the pipeline."""

SUBCOMMANDS: dict[str, Subcommand] = {
    "fit": Subcommand(*_FINETUNE, frozenset({"model", "train_dataloaders", "val_dataloaders", "datamodule"})),
    "validate": Subcommand(*_PERPLEXITY, frozenset({"model", "dataloaders", "datamodule"})),
    "test": Subcommand(*_PERPLEXITY, frozenset({"model", "dataloaders", "datamodule"})),
    "predict": Subcommand(None, None, frozenset({"model", "dataloaders", "datamodule"})),
    "evaluate": Subcommand(*_PERPLEXITY),
    "prune": Subcommand(*_CALIBRATION),
    "finetune": Subcommand(
        _FINETUNE[0],
        None,
        _FINETUNE_SECTIONS,
        classes=(("finetune_data", _FINETUNE[1]),),
        sections=(("lora", LoraSettings), ("training", TrainingSettings)),
    ),
    "pipeline": Subcommand(*_CALIBRATION, classes=(("finetune_data", _FINETUNE[1]),)),
}
"""The place of each fine-tuning setting is the same in ``finetune`` and ``pipeline``: top-level ``lora``,
``training`` and ``finetune_data``. ``fit`` is Lightning's and keeps ``model.lora``, ``model.training`` and
``data``."""


_NULLS = frozenset({"null", "Null", "NULL", "~"})


def nested_nulls(args: list[str] | tuple[str, ...], options: Any) -> list[str]:
    """``args`` with each ``--section.sub.key null`` given as ``--section.sub '{"key": null}'``.

    jsonargparse passes a dotted key below an optional section (``evaluation: EvaluationSettings | None``)
    on to the section's own parser as the text ``--sub.key=<value>`` of the value it has already loaded, so
    ``null`` arrives there as the string ``None``: an ``int | None`` refuses it, a ``str | None`` keeps the
    string. A mapping one level down is parsed as a value, not as text, and is merged with what the section
    already holds, as the dotted key would be. ``options`` are the option strings the subcommand's parser
    registered; a key registered itself (the fields of a section that is not optional) is left as it is.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg.partition("=")
        paired = not eq and i + 1 < len(args)
        if paired:
            value = args[i + 1]
        rewritten = _nested_null(key, value, options) if key.startswith("--") and (eq or paired) else None
        if rewritten is None:
            out.append(arg)
            i += 1
            continue
        out.extend(rewritten)
        i += 1 if eq else 2
    return out


def _nested_null(key: str, value: str, options: Any) -> list[str] | None:
    """``[--section.sub, '{"key": null}']`` for a null two or more keys below a section option, else None."""
    if value.strip() not in _NULLS or key in options:
        return None
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:n]) in options:
            break
    else:
        return None
    if parts[n] == "init_args":
        n += 1
    rest = parts[n:]
    if len(rest) < 2 or rest[0] == "dict_kwargs":
        return None
    nested: Any = None
    for part in reversed(rest[1:]):
        nested = {part: nested}
    return [".".join(parts[: n + 1]), json.dumps(nested)]


class PrunelightCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: sub.method_skip() for name, sub in SUBCOMMANDS.items()}

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        self._preparing: Subcommand | None = SUBCOMMANDS[subcommand]
        try:
            parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        finally:
            self._preparing = None
        defaults = SUBCOMMANDS[subcommand]
        for key, settings_class in defaults.sections:
            parser.set_defaults({key: settings_class()})
        if defaults.model:
            parser.set_defaults({"model": {"class_path": defaults.model}})
        if defaults.data:
            parser.set_defaults({"data": {"class_path": defaults.data}})
        for key, class_path in defaults.classes:
            parser.set_defaults({key: {"class_path": class_path}})
        return parser

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Lightning's trainer, model and data sections, less what the subcommand's skip set leaves out:
        the ``data`` section and init arguments of the model (``model.lora``), top-level sections there."""
        sub = getattr(self, "_preparing", None)
        if sub is None or ("data" not in sub.skip and not sub.model_skip()):
            return super().add_core_arguments_to_parser(parser)
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_subclass_arguments(
            self._model_class, "model", fail_untyped=False, required=True, skip=sub.model_skip()
        )
        if "data" not in sub.skip:
            parser.add_lightning_class_args(
                self._datamodule_class, "data", subclass_mode=self.subclass_mode_data
            )
        return None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="Results go to <results_root>/<model>/<experiment>/ (default: the subcommand).",
        )
        parser.add_argument("--results_root", type=str, default="results", help="Root of all result folders.")
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Write the results exactly here instead of <results_root>/<model>/<experiment>/.",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="Replace an existing run folder, once this run has completed (until then it is untouched). "
            "Without it, a folder that is not empty is refused before anything runs.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Lightning's, without its warning that ``args`` and ``sys.argv`` were both given: prunelight always
        passes the arguments itself (``main`` needs them to dispatch ``report``/``compare``/``experiment``,
        ``experiment`` passes each cell's), so the mistake it warns about cannot happen. A ``null`` two keys
        below a section option is given to jsonargparse as a mapping (:func:`nested_nulls`)."""
        if isinstance(args, (list, tuple)):
            subcommand = next((arg for arg in args if arg in self._subcommand_parsers), None)
            if subcommand is not None:
                args = nested_nulls(args, self._subcommand_parsers[subcommand]._option_string_actions)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Lightning's (a checkpoint's hyperparameters become the ``model`` section), less the model init
        arguments that the subcommand takes as top-level sections (``lora``, ``training`` on finetune): those
        come from the YAML, and FinetuneModule refuses a checkpoint written with other lora settings."""
        super()._parse_ckpt_path()
        subcommand = self.config.get("subcommand")
        extra = self.config[subcommand].get("model.dict_kwargs") if subcommand else None
        if isinstance(extra, dict):
            for key in SUBCOMMANDS[subcommand].model_skip():
                extra.pop(key, None)
            if not extra:
                del self.config[subcommand]["model.dict_kwargs"]

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer writes into the run folder's staging folder; a finished run there is refused first."""
        config = self._get(self.config, "trainer")
        self.run_folder: RunFolder | None = None
        folder = self.run_dir()
        if self.subcommand is not None:  # cli(run=False) runs nothing itself: no staging
            self.run_folder = RunFolder(
                folder, self._get(self.config, "overwrite"), self._get(self.config, "ckpt_path")
            )
            self.run_folder.check()
            folder = self.run_folder.staging
            # the tb/config.yaml this run saves must not replace a run when someone reruns it with --config
            self.config[self.subcommand]["overwrite"] = False
        kwargs["default_root_dir"] = str(folder)
        if config.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(save_dir=str(folder), name="tb", version="")
        return super().instantiate_trainer(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        """The subcommand inside its run folder's lifecycle: renamed into place when it returns, removed when
        it raises (an error, a signal)."""
        if self.run_folder is None:
            return super()._run_subcommand(subcommand)
        with self.run_folder.staged(self.trainer.is_global_zero, self.trainer.loggers):
            super()._run_subcommand(subcommand)

    def run_dir(self) -> Path:
        """The final folder: ``--run_dir``, else ``trainer.default_root_dir``, else
        ``<results_root>/<model>/<experiment>``."""
        for key in ("run_dir", "trainer.default_root_dir"):
            if self._get(self.config, key):
                return Path(self._get(self.config, key))
        experiment = self._get(self.config, "experiment") or self.subcommand or "run"
        name = getattr(self.model, "run_name", type(self.model).__name__)
        return Path(self._get(self.config, "results_root")) / name / experiment


def cli(args: Any = None, run: bool = True) -> PrunelightCLI:
    _hide_lightning_tips()
    return PrunelightCLI(
        L.LightningModule,
        L.LightningDataModule,
        trainer_class=PrunelightTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"exit_on_error": False},  # main() prints a parser error as one line
        args=args,
        run=run,
    )


def one_line_error(err: BaseException) -> str | None:
    """What the command line prints for ``err`` (one line), or None for a bug (it keeps its traceback).

    A :class:`PrunelightError` anywhere in the chain (jsonargparse wraps errors raised while it builds the
    classes) prints its message. jsonargparse's own reports (an unknown key, a value of the wrong type, a
    number where a section is expected) print the key, the value and what is allowed; an error a settings
    class raised while jsonargparse type-checked it prints its message. Lightning's refusals of trainer
    settings (an accelerator the machine lacks) print the message and the key to change.
    """
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for item in chain:
        if isinstance(item, PrunelightError):
            return _flat(str(item))
    first = chain[0]
    quoted = raised_message_in(str(first))
    if quoted is not None:
        key = _parser_keys(str(first))
        return f"{key}: {quoted}" if key and not quoted.startswith(key) else quoted
    if isinstance(first, ArgumentError):
        return _parser_message(str(first))
    if isinstance(first, TypeError) and "must be a mapping" in str(first):
        key, value = _instantiated(first)  # a YAML section given a scalar reaches the settings class
        if key is not None:
            return f"{key}: expected a mapping of settings (a YAML section), got {value!r}"
    refused = next((item for item in chain if isinstance(item, MisconfigurationException)), None)
    if refused is None and isinstance(first, ValueError) and _raised_in(first, "instantiate_trainer"):
        refused = first  # Lightning refuses a trainer setting (an unknown strategy) with a ValueError
    if refused is not None:
        text = _flat(str(refused))
        words = text.lower()
        key = next((k for k in ("strategy", "devices", "precision", "num_nodes") if k in words), None)
        if key is None and any(word in words for word in ("gpu", "cuda", "mps", "tpu", "accelerator")):
            gpus = torch.cuda.device_count()
            return (
                f"trainer.accelerator: {text} (this machine has {gpus} CUDA GPU{'' if gpus == 1 else 's'}); "
                "use --trainer.accelerator cpu, or auto to take what is there"
            )
        return f"trainer.{key}: {text}" if key else f"trainer: {text}"
    return None


class _NoTips(logging.Filter):
    """Drops Lightning's advertising lines ("💡 Tip: ... try installing litlogger / litmodels"), which it
    logs at info level through its rank-zero logger on every run; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def _hide_lightning_tips() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


def _instantiated(err: BaseException) -> tuple[str | None, Any]:
    """The key (and its value) jsonargparse was instantiating when ``err`` was raised, from its frames."""
    key, value, tb = None, None, err.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        if tb.tb_frame.f_code.co_name == "instantiate" and hasattr(local.get("component"), "dest"):
            key = local["component"].dest
            value = local["cfg"].get(key) if hasattr(local.get("cfg"), "get") else None
        tb = tb.tb_next
    return key, value


def _raised_in(err: BaseException, function: str) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == function:
            return True
        tb = tb.tb_next
    return False


def _flat(text: str) -> str:
    return " ".join(text.split())


def _parser_keys(message: str) -> str:
    """``model.dtype`` from jsonargparse's nested ``Parser key "model": ... Parser key "dtype":`` lines."""
    keys: list[str] = []
    for key in re.findall(r'Parser key "([^"]+)"', message):
        if not keys or keys[-1] != key:
            keys.append(key)
    return ".".join(keys)


MOVED: dict[str, tuple[str, str]] = {
    "model.lora": ("lora", "the LoRA settings"),
    "model.training": ("training", "the optimiser settings"),
    "data": ("finetune_data", "the fine-tuning data"),
}
"""Keys that ``finetune`` does not take (``fit``'s places) and the top-level section they are in ``finetune``
and ``pipeline``, with what they hold."""


def _moved_key(message: str) -> str | None:
    """The line for a key that is not accepted because it is a top-level section in finetune and pipeline."""
    given = re.search(r"Option '([\w.]+)' is not accepted", message) or re.search(
        r"unrecognized arguments: --([\w.]+)", message
    )
    if given is None:
        return None
    key = _parser_keys(message)
    full = f"{key}.{given.group(1)}" if key else given.group(1)
    for old, (new, what) in MOVED.items():
        if full == old or full.startswith(old + "."):
            return (
                f"{full} is not a key here: finetune and pipeline take {what} as the top-level {new} section "
                f"({new}{full[len(old) :]})"
            )
    return None


def _parser_message(message: str) -> str:
    """One line for a jsonargparse error report: the key, the value given, and what the key accepts."""
    moved = _moved_key(message)
    if moved is not None:
        return moved
    key = _parser_keys(message)
    where = f"{key}: " if key else ""
    given = re.search(r"Got value: (.*)", message) or re.search(r"Given value: (.*)", message)
    value = given.group(1).strip() if given else None
    allowed = [
        choice.strip().strip("'\"")
        for literal in re.findall(r"Literal\[([^\]]*)\]", message)
        for choice in literal.split(",")
    ]
    if allowed and value is not None:
        return f"{where}{value!r} is not one of {', '.join(dict.fromkeys(allowed))}"
    expected = [t for t in re.findall(r"Expected a <class '([\w.]+)'>", message) if t != "NoneType"]
    if any(m in message for m in ("Not a valid subclass", "Unable to load config", "import path")):
        what = value if value is not None else message.splitlines()[-1].split("config", 1)[-1].strip(" '\"")
        hint = " (YAML puts a space after each colon: {key: value})" if re.search(r":\S", what) else ""
        return f"{where}expected a mapping of settings (a YAML section), got {what}{hint}"
    if expected and value is not None:
        return f"{where}expected {' or '.join(dict.fromkeys(expected))}, got {value!r}"
    lines = [re.sub(r'^Parser key "[^"]+":', "", line.strip()) for line in message.splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith("Given value"))
    if text.startswith("unrecognized arguments"):
        text += " (the keys each subcommand takes: prunelight <subcommand> --help)"
    return where + _flat(text)
