#!/usr/bin/env bash
# Install prunelight into .venv and run the main job on the small real default:
# perplexity of SmolLM2-135M on WikiText-2 and PTB test (seqlen 2048). Extra arguments are passed on,
# e.g. scripts/quickstart.sh --data.max_windows 8
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[gguf]"
if [ -z "${PRUNELIGHT_DATA:-}" ] && [ -d ../shared/data ]; then export PRUNELIGHT_DATA=$(cd ../shared/data && pwd); fi
.venv/bin/prunelight evaluate --config configs/evaluate_smollm2_wikitext2.yaml "$@"
