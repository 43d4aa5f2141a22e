#!/usr/bin/env bash
# Install prunelight into .venv and run the main job on the small real default: prune SmolLM2-135M by 20%
# (global Taylor, T and tau corrections) and report WikiText-2 perplexity before and after. Extra
# arguments are passed on, e.g. scripts/quickstart.sh --ranking.ratio 0.5
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[gguf]"
if [ -z "${PRUNELIGHT_DATA:-}" ] && [ -d ../shared/data ]; then export PRUNELIGHT_DATA=$(cd ../shared/data && pwd); fi
.venv/bin/prunelight prune --config configs/prune_smollm2_taylor.yaml "$@"
