#!/usr/bin/env bash
# Model v3: the default checkpoint (v2.2, one patient) fine-tuned on several patients' pools, v2.2's loss and
# options (an --init run must keep the generator's). One run per row of the leave-one-patient-out table, and the
# run on all patients that ships. Usage: train.sh RUN POOL... (each POOL a folder under $DATA).
# INIT: the model to start from. The v3 runs started from `default` when the default was v2.2, which never saw lung1
# or lung2. Since v3 ships, `default` has seen every catalogue patient: a leave-one-patient-out row must start from
# v2.2's weights instead, e.g.
#   mkdir v22 && for f in config.json model.safetensors; do
#     git show 3b0dfa7^:python/dexrt/models/default-checkpoint/$f > v22/$f; done   # sha256 aae1fad0... (weights)
#   INIT=$PWD/v22 train.sh lopo-lung2 pool-example pool-lung1
set -euo pipefail
DATA=${DATA:-/work/data}
RUNS=${RUNS:-/work/runs}
STEPS=${STEPS:-2500}
run=$1; shift
pools=(); for p in "$@"; do pools+=("$DATA/$p"); done
mkdir -p "$RUNS"
resume=(); [ -d "$RUNS/$run/last" ] && resume=(--resume)
if [ ${#resume[@]} -eq 0 ]; then
  init=(--init "${INIT:-default}" --val-data "$DATA/valmix" --steps "$STEPS" --ngf 16 --depth 8 --crop 256 --batch-size 2
        --lr 1e-4 --decay-start 0.3 --lambda-l1 1000 --lambda-grad 1000 --lambda-msssim 1000 --lambda-gan 0
        --dropout 0 --normalisation robust --upsample resize --soft-from-se --val-every 500 --val-views 12
        --num-workers 0 --seed 0)
else
  init=(--steps "$STEPS" --num-workers 0)
fi
OMP_NUM_THREADS=${THREADS:-1} dexrt train "${pools[@]}" -o "$RUNS/$run" "${resume[@]}" "${init[@]}" --no-progress
