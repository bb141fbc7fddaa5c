#!/usr/bin/env bash
# Score an engine on every patient's evaluation views: unseen angles (test split) and train-range angles (the first
# 80 train-split views) of each of PATIENTS (default: the three v3 trained on; the new patients: PATIENTS="platipy
# ctanalyser tscta"). Usage: eval.sh NAME ENGINE  ->  $EVALS/NAME/<set>/metrics.json (+ panel.png)
set -euo pipefail
DATA=${DATA:-/work/data}
EVALS=${EVALS:-/work/evals}
name=$1; engine=$2
for p in ${PATIENTS:-example lung1 lung2}; do
  dexrt eval "$DATA/eval-$p" --engine "$engine" --split test -o "$EVALS/$name/$p-unseen" --json > /dev/null
  dexrt eval "$DATA/eval-$p" --engine "$engine" --split train --max-views 80 -o "$EVALS/$name/$p-inside" --json > /dev/null
done
