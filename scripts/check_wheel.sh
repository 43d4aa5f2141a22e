#!/usr/bin/env bash
# Build prunelight's wheel, install it (not editable) into a fresh environment, and from outside the repository
# import every module of the installed package and run `prunelight --help`. The development environment's
# editable install finds every folder of the repository whether it is packaged or not; this is what
# `pip install .` really gives a user. Run by scripts/test.sh (and so by CI).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
rm -rf build/wheel .venv-wheel
python3 -m venv .venv-wheel
.venv-wheel/bin/python -m pip install -q --upgrade pip
.venv-wheel/bin/python -m pip wheel -q --no-deps -w build/wheel .
wheel=$(ls build/wheel/prunelight-*.whl)
.venv-wheel/bin/python -m pip install -q "torch==2.13.0" "${wheel}[gguf,eval]"
cd "$(mktemp -d)"  # away from the repository: only the installed copy can be imported
"$repo/.venv-wheel/bin/python" - "$repo" <<'PY'
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import prunelight

repo = Path(sys.argv[1])
installed = Path(prunelight.__file__).resolve()
assert "site-packages" in installed.parts and repo / "prunelight" not in installed.parents, installed
modules = [m.name for m in pkgutil.walk_packages(prunelight.__path__, "prunelight.") if "__main__" not in m.name]
for name in modules:
    importlib.import_module(name)
for generic in ("callbacks", "train"):
    assert importlib.util.find_spec(generic) is None, f"installing prunelight added a top-level {generic!r}"
print(f"check_wheel: imported {len(modules)} modules from {installed.parent}")
PY
"$repo/.venv-wheel/bin/prunelight" --help > /dev/null
echo "check_wheel: prunelight --help ran from the installed wheel"
