"""A run folder's lifecycle on the command line: refuse a finished run at once, stage, rename when complete.

Why: a run used to write straight into ``<results_root>/<model>/<experiment>/``. A second run into the same
folder deleted the first one's ``summary.md`` at its start, overwrote its JSON and TensorBoard config, and
was refused only at the save step, after all the compute; a run with other settings left a folder mixing
both; an error, Ctrl-C or SIGTERM left the finished run without its summary. The rules here:

* A folder that exists and is not empty is refused before any model loads (:meth:`RunFolder.check`),
  unless ``--overwrite true`` was given; then it is replaced, but only once the new run has completed.
* A run writes everything (``trainer.default_root_dir``, TensorBoard, checkpoints, ``analysis/``, models,
  ``summary.md``) into a hidden staging folder beside the final one, ``<parent>/.<name>.partial``, renamed
  to ``<name>`` only when the subcommand returned (:meth:`RunFolder.staged`). With ``--overwrite`` the old
  folder is first renamed aside (``.<name>.replaced``), the staging folder renamed in, then the old one
  deleted: at every moment the final name holds one complete run or nothing, never a mix.
* On any exception (a config error after calibration, a crash, SIGINT or SIGTERM) the staging folder is
  removed, except a ``checkpoints/`` folder holding Lightning checkpoints (a fine-tuning run resumes from
  them with ``--ckpt_path``; the one line printed says where they are). A staging folder left behind (a
  killed process, kept checkpoints) is cleared at the start of the next run into the same folder, unless
  that run resumes from a checkpoint inside it.
* Only global rank 0 creates, clears and renames. Under DDP, Lightning starts the other ranks with the same
  command line; they resolve the same folders, pass the same check (the final folder does not exist yet,
  or ``--overwrite`` is set) and write nothing of their own.

The Python API (:class:`~prunelight.trainer.PrunelightTrainer` methods) writes into ``default_root_dir`` as
given; wrap it in :meth:`RunFolder.staged` for the same guarantees.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from prunelight.errors import ConfigError
from prunelight.io import check_creatable
from prunelight.signals import Stopped, held

CHECKPOINTS = "checkpoints"
RUN_ENTRIES = frozenset(
    {"summary.md", "analysis", "tb", "pruned_model", "finetuned_model", "adapter", CHECKPOINTS}
)
"""What a prunelight run writes at the top of its folder: ``--overwrite`` replaces only a folder holding one
of these (so a mistyped ``--run_dir`` pointing at a home folder is never deleted)."""


class RunFolder:
    """The final folder of one run, its staging folder and the rules above.

    Args:
        final: ``<results_root>/<model>/<experiment>`` or ``--run_dir``.
        overwrite: replace an existing run folder once this run has completed.
        resume_from: a checkpoint this run resumes from (``--ckpt_path``); one inside the staging folder
            keeps that folder's ``checkpoints/`` when a stale staging folder is cleared.
    """

    def __init__(self, final: str | Path, overwrite: bool = False, resume_from: str | None = None) -> None:
        self.final = Path(final)
        self.overwrite = overwrite
        self.resume_from = resume_from
        self.staging = self.final.parent / f".{self.final.name}.partial"
        self.aside = self.final.parent / f".{self.final.name}.replaced"

    def check(self) -> None:
        """Refuse at once (before any model loads) a final folder that already holds something, or one that
        cannot be created (under a file, read-only) with its staging folder beside it."""
        check_creatable(self.final, "results_root (or run_dir)")
        check_creatable(self.final.parent, "results_root (or run_dir)")
        if not _occupied(self.final):
            return
        if not self.overwrite:
            raise ConfigError(
                f"{self.final} already holds a run; pass --overwrite true to replace it once this run has "
                "completed, or choose another --experiment or --run_dir"
            )
        if not self.final.is_dir() or not RUN_ENTRIES & {p.name for p in self.final.iterdir()}:
            raise ConfigError(
                f"{self.final} is not a prunelight run folder (no summary.md, analysis/, tb/ ...); "
                "--overwrite replaces run folders only: choose another --experiment or --run_dir"
            )

    @contextmanager
    def staged(self, owner: bool, loggers: Iterable[Any] = ()) -> Iterator[Path]:
        """Run the block with the staging folder as the run's folder; rename it to the final name if the block
        returns, remove it (all but its checkpoints) if it raises. ``owner``: this process is global rank 0
        (the only one that creates, renames or removes anything). ``loggers`` are finalised (flushed and
        closed) before the rename."""
        created = self._prepare() if owner else []
        try:
            yield self.staging
        except BaseException as err:
            if owner:
                self._discard(err, created)
            raise
        if owner:
            for logger in loggers:
                logger.finalize("success")
            with held():
                self._commit()

    def _prepare(self) -> list[Path]:
        """Clear a stale staging folder and create a fresh one; return the folders created (parents too)."""
        if self.aside.exists():  # a replacement that stopped between its two renames
            if _occupied(self.final):
                shutil.rmtree(self.aside)
            else:
                _remove_empty(self.final)
                self.aside.rename(self.final)
                self.check()
        if self.staging.exists():
            keep = CHECKPOINTS if self._resumes_from_staging() else None
            _clear(self.staging, keep)
        created = []
        folder = self.staging
        while not folder.exists():
            created.append(folder)
            folder = folder.parent
        self.staging.mkdir(parents=True, exist_ok=True)
        return created

    def _resumes_from_staging(self) -> bool:
        if not self.resume_from:
            return False
        return Path(self.resume_from).absolute().is_relative_to(self.staging.absolute() / CHECKPOINTS)

    def _commit(self) -> None:
        """Staging -> final; with --overwrite the old final goes aside first and is deleted last."""
        replacing = _occupied(self.final)
        if replacing and not self.overwrite:  # another run finished there while this one ran
            raise ConfigError(
                f"{self.final} was written by another run while this one ran; this run's complete results "
                f"stay in {self.staging} (rename it to keep them)"
            )
        if replacing:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.final.rename(self.aside)
        else:
            _remove_empty(self.final)
        try:
            self.staging.rename(self.final)
        except BaseException:
            if replacing:
                self.aside.rename(self.final)
            raise
        if replacing:
            shutil.rmtree(self.aside)

    def _discard(self, err: BaseException, created: list[Path]) -> None:
        """Remove the staging folder (but its checkpoints) and the parents this run created."""
        kept = _clear(self.staging, CHECKPOINTS)
        if kept is None:
            for folder in created:
                _remove_empty(folder)
        else:
            print(
                f"prunelight: the checkpoints of this unfinished run are kept in {kept}; resume with "
                f"--ckpt_path {_newest(kept)} (the next run into {self.final} without it deletes them)",
                file=sys.stderr,
            )
        if isinstance(err, Stopped):  # main() names the folder in its one line
            err.folder = self.final


def _occupied(path: Path) -> bool:
    """``path`` exists and is not an empty folder."""
    if not path.exists():
        return False
    return not path.is_dir() or any(path.iterdir())


def _remove_empty(folder: Path) -> None:
    with suppress(OSError):  # missing or not empty
        folder.rmdir()


def _clear(folder: Path, keep: str | None) -> Path | None:
    """Remove ``folder``, or all of it but ``folder/keep`` when that holds files; return what was kept."""
    kept = folder / keep if keep else None
    if kept is None or not kept.is_dir() or not any(p.is_file() for p in kept.rglob("*")):
        shutil.rmtree(folder, ignore_errors=True)
        return None
    for entry in folder.iterdir():
        if entry != kept:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    return kept


def _newest(folder: Path) -> Path:
    last = folder / "last.ckpt"
    if last.is_file():
        return last
    checkpoints = sorted(folder.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return checkpoints[-1] if checkpoints else folder


class removed_on_failure:
    """Delete what the block created of ``folder`` and its parents, if the block raises.

    On the command line ``folder`` is a fresh staging folder that :class:`RunFolder` removes itself; this is
    for the Python API, where a stage writes into whatever ``default_root_dir`` the caller gave.
    """

    def __init__(self, folder: Path) -> None:
        folder = self.folder = folder.absolute()
        self.created: Path | None = None
        while not folder.exists():
            self.created, folder = folder, folder.parent

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool:
        if kind is not None and self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
        return False


FINISHED_MARKS = ("summary.md", "analysis/recovery.json")
"""``summary.md`` (written last) says a folder holds a finished run; a pipeline's ``recovery.json`` puts its
table on top of any later ``summary.md``."""


class rewritten(removed_on_failure):
    """A stage writing into ``folder`` from the Python API: an earlier run's finished marks go first, so a
    rerun into the same ``default_root_dir`` that fails half-way never leaves an old summary over new files.
    (The command line never reuses a folder: each run has its own staging folder.)"""

    def __enter__(self) -> None:
        if self.created is None:
            for name in FINISHED_MARKS:
                (self.folder / name).unlink(missing_ok=True)
