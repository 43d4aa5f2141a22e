"""SIGINT and SIGTERM stop a command at once, through the same cleanup as an error, and exit 130 / 143.

Why: Python's default SIGINT raises KeyboardInterrupt, which Lightning catches inside ``fit``/``test`` and
turns into ``sys.exit(1)``; the SIGTERM handler Lightning installs while a loop runs only sets a flag that
the fit loop reads, so a prune run went on (11-45 s) and exited 0. :func:`stop_on_signals` installs
handlers that raise
:class:`Stopped`, a ``BaseException`` that is no ``KeyboardInterrupt``: Lightning runs its teardown for it
and re-raises it; Lightning keeps a SIGTERM handler that is already installed and calls it after its own
(``_SignalConnector.register_signal_handlers``), which stops DDP children. The exception unwinds through
:class:`prunelight.run_folder.RunFolder`, which removes the unfinished run, to :func:`prunelight.main.main`,
which prints one line and exits ``128 + signal``. A second signal while that cleanup runs exits at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """A run was stopped by ``signum``; ``folder`` is the run folder it did not write (set on the way out)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.folder: Path | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    """What the handlers of :func:`stop_on_signals` share with :func:`held`."""

    received: list[int] = []
    holding: int = 0
    pending: int | None = None


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` in the block (main thread only); the previous handlers
    come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.received, _State.holding, _State.pending = [], 0, None

    def stop(signum: int, frame: FrameType | None) -> None:
        if _State.received:  # a second signal: the cleanup of the first is taking too long for the user
            os._exit(128 + signum)
        _State.received.append(signum)
        if _State.holding:
            _State.pending = signum
            return
        raise Stopped(signum)

    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def held() -> Iterator[None]:
    """A signal that arrives in the block stops the program only after it (a run folder's renames: a signal
    between them would leave no run, or report a run it had written as not written)."""
    _State.holding += 1
    try:
        yield
    finally:
        _State.holding -= 1
        if not _State.holding and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            raise Stopped(signum)
