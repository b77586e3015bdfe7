#!/usr/bin/env bash
# The README's main-job command: install, build, generate a small synthetic passkey QA set,
# fine-tune a tiny model with LRSA attention (configs/quickstart.json; GPU when present, else
# CPU), and evaluate it. Extra arguments go to `lrsa-train train` (e.g. --set schedule.max_steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
bin="${BUILD_DIR:-build}"/lrsa-train
# Passkey retrieval: a 5-digit key hidden in ~100 tokens of filler (at 300 the tiny model needs
# far more than a few minutes of training to learn the retrieval).
[ -s data/quickstart/train.jsonl ] || "$bin" make-data --kind passkey --out data/quickstart/train.jsonl \
  --samples 4000 --context-tokens 100 --seed 1
[ -s data/quickstart/eval.jsonl ] || "$bin" make-data --kind passkey --out data/quickstart/eval.jsonl \
  --samples 64 --context-tokens 100 --seed 2
"$bin" train --config configs/quickstart.json "$@"
# QA accuracy of the fine-tuned model through the KV cache: dense and LagKV 2x / 4x / 8x (docs/inference.md).
"$bin" eval-qa --config configs/quickstart.json --max-new-tokens 8 --out runs/quickstart/eval_qa.jsonl
