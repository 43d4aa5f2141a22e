#!/usr/bin/env bash
# Install prunelight into .venv and run the main job on the small real default: the pipeline on SmolLM2-135M
# (prune 20% structured with global Taylor and the T/tau corrections, LoRA fine-tune, and WikiText-2
# perplexity plus five zero-shot accuracies for the dense, pruned and recovered model). Extra arguments are
# passed on, e.g. scripts/quickstart.sh --ranking.ratio 0.5 --trainer.max_steps 100
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[gguf,eval]"
if [ -z "${PRUNELIGHT_DATA:-}" ] && [ -d ../shared/data ]; then export PRUNELIGHT_DATA=$(cd ../shared/data && pwd); fi
.venv/bin/prunelight pipeline --config configs/pipeline_smollm2.yaml "$@"
