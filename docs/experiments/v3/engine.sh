#!/usr/bin/env bash
# A run's best checkpoint -> flip-averaged ONNX -> FP16 engine bundle (signed when KEY is given), then scored on
# every patient (eval.sh). Usage: engine.sh RUN [KEY]
set -euo pipefail
RUNS=${RUNS:-/work/runs}
EVALS=${EVALS:-/work/evals}
run=$1; key=${2:-}
sign=(); [ -n "$key" ] && sign=(--sign "$key")
dexrt export "$RUNS/$run/best" -o "$RUNS/$run.onnx" --flip-average
dexrt build-engine "$RUNS/$run.onnx" -o "$RUNS/$run.dexrt" --precision fp16 "${sign[@]}"
bash "$(dirname "$0")/eval.sh" "$run" "$RUNS/$run.dexrt"
