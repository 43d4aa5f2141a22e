"""``prunelight`` / ``python train.py``: one LightningCLI whose subcommands are the Trainer's stages.

Each subcommand has default model and data classes (:data:`SUBCOMMANDS`), so a YAML needs no
``class_path``; results land in ``<results_root>/<model>/<experiment>/`` with TensorBoard under ``tb/``,
written into a staging folder renamed when the run completes (:mod:`prunelight.run_folder`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from prunelight.errors import PrunelightError
from prunelight.run_folder import RunFolder
from prunelight.signals import Stopped, stop_on_signals
from prunelight.trainer import PrunelightTrainer


@dataclass(frozen=True)
class Subcommand:
    """Default classes of a subcommand, and the Trainer-method arguments the CLI fills itself."""

    model: str | None
    data: str | None
    skip: frozenset[str] = frozenset({"model", "datamodule"})
    classes: tuple[tuple[str, str], ...] = ()
    """Other class-typed arguments of the method and their default classes (so YAML needs no class_path)."""


_PERPLEXITY = ("prunelight.evaluate.PerplexityModule", "prunelight.data.datamodule.PerplexityDataModule")
_FINETUNE = ("prunelight.finetune.FinetuneModule", "prunelight.finetune.LanguageModelingDataModule")
_CALIBRATION = ("prunelight.calibration.CalibrationModule", "prunelight.calibration.CalibrationDataModule")

SUBCOMMANDS: dict[str, Subcommand] = {
    "fit": Subcommand(*_FINETUNE, frozenset({"model", "train_dataloaders", "val_dataloaders", "datamodule"})),
    "validate": Subcommand(*_PERPLEXITY, frozenset({"model", "dataloaders", "datamodule"})),
    "test": Subcommand(*_PERPLEXITY, frozenset({"model", "dataloaders", "datamodule"})),
    "predict": Subcommand(None, None, frozenset({"model", "dataloaders", "datamodule"})),
    "evaluate": Subcommand(*_PERPLEXITY),
    "prune": Subcommand(*_CALIBRATION),
    "finetune": Subcommand(*_FINETUNE),
    "pipeline": Subcommand(*_CALIBRATION, classes=(("finetune_data", _FINETUNE[1]),)),
}


class PrunelightCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: set(sub.skip) for name, sub in SUBCOMMANDS.items()}

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        defaults = SUBCOMMANDS[subcommand]
        if defaults.model:
            parser.set_defaults({"model": {"class_path": defaults.model}})
        if defaults.data:
            parser.set_defaults({"data": {"class_path": defaults.data}})
        for key, class_path in defaults.classes:
            parser.set_defaults({key: {"class_path": class_path}})
        return parser

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
        ``experiment`` passes each cell's), so the mistake it warns about cannot happen."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().parse_arguments(parser, args)

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
        args=args,
        run=run,
    )


def main(args: Any = None) -> None:
    """Entry point of ``prunelight`` and ``python train.py``: user errors print one line and exit 2.

    ``report``, ``compare`` and ``experiment`` work on finished runs and grids of runs, not on a model and
    a trainer, so they are plain jsonargparse commands (:mod:`prunelight.tools`) dispatched before
    LightningCLI; every other subcommand is LightningCLI's. SIGINT and SIGTERM stop the run, remove what it
    had written and exit 130 / 143 (:mod:`prunelight.signals`).
    """
    from prunelight.tools import TOOLS, run_tool

    argv = list(sys.argv[1:] if args is None else args)
    try:
        with stop_on_signals():
            if argv and argv[0] in TOOLS:
                run_tool(argv[0], argv[1:])
            else:
                cli(argv)
    except Stopped as stop:
        written = f"; nothing was written to {stop.folder}" if stop.folder is not None else ""
        print(f"prunelight: stopped by {stop.name}{written}", file=sys.stderr)
        if args is None:  # the program itself: skip the interpreter's shutdown (seconds with torch loaded)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(stop.exit_code)
        sys.exit(stop.exit_code)
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        print(f"prunelight: error: {user_error}", file=sys.stderr)
        sys.exit(2)


def _user_error(err: BaseException | None) -> PrunelightError | None:
    """The PrunelightError behind ``err``: jsonargparse wraps errors raised while it builds the classes."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, PrunelightError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
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
