"""The program: ``prunelight`` (the console script), ``python train.py`` and ``python -m prunelight``.

It dispatches to one of two command lines and turns what they raise into what a user should see: the tools
that work on finished runs (:mod:`prunelight.tools`) or the LightningCLI of the stages
(:mod:`prunelight.cli`). It sits above both, so neither imports the other.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from prunelight.cli import cli, one_line_error
from prunelight.models.attention import efficient_float32_attention
from prunelight.signals import Stopped, stop_on_signals
from prunelight.tools import TOOLS, run_tool


def main(args: Any = None) -> None:
    """Entry point of ``prunelight`` and ``python train.py``: user errors print one line and exit 2.

    ``report``, ``compare`` and ``experiment`` work on finished runs and grids of runs, not on a model and
    a trainer, so they are plain jsonargparse commands (:mod:`prunelight.tools`) dispatched before
    LightningCLI; every other subcommand is LightningCLI's. SIGINT and SIGTERM stop the run, remove what it
    had written and exit 130 / 143 (:mod:`prunelight.signals`). Float32 attention with grouped key/value
    heads takes the memory-efficient kernel throughout the run (:mod:`prunelight.models.attention`): in
    this process and in the ranks Lightning's ``ddp`` launcher starts (they run this program again); a
    ``ddp_spawn`` worker has it in its calibration and search, which enter it themselves.
    """
    argv = list(sys.argv[1:] if args is None else args)
    try:
        with stop_on_signals(), efficient_float32_attention():
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
        message = one_line_error(err)
        if message is None:
            raise
        print(f"prunelight: error: {message}", file=sys.stderr)
        sys.exit(2)
