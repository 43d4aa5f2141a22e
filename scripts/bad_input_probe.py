"""Run every bad input of tests/test_bad_input.py through the real command line; print docs/errors.md's table.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bad_input_probe.py > /tmp/table.md

Each case runs in a subprocess (``train.py``, the ``prunelight`` program) as a user would type it, against
a tiny model and broken files written into a temporary folder; the table shows the exit code, the last line
of stderr, and whether a results folder was left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import build_tiny_tokenizer  # noqa: E402  (importing conftest sets the offline hub and data root)
from test_bad_input import CASES, with_results_root, write_inputs  # noqa: E402


def tiny_tokenizer(folder: Path):
    """The tests' tiny byte-level BPE (tests/conftest.py), built outside pytest."""
    return build_tiny_tokenizer()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs = write_inputs(folder / "inputs", tiny_tokenizer(folder))
        print("| bad input | exit | stderr, last line | results folder |")
        print("| --- | ---: | --- | --- |")
        for case in CASES:
            results = folder / "results" / case.id
            args = with_results_root(case.args(inputs), results)
            done = subprocess.run(
                [sys.executable, str(ROOT / "train.py"), *args],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
                cwd=folder,
            )
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            last = lines[-1] if lines else ""
            line = last.replace(str(results), "<results>").replace(str(inputs.folder), "<tmp>")
            line = line.replace("|", "\\|")
            left = "left behind" if results.exists() else "none"
            print(f"| {case.what} | {done.returncode} | `` {line} `` | {left} |", flush=True)


if __name__ == "__main__":
    main()
