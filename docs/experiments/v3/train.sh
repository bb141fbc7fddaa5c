#!/usr/bin/env bash
# Model v3: the default checkpoint (v2.2, one patient) fine-tuned on several patients' pools, v2.2's loss and
# options (an --init run must keep the generator's). One run per row of the leave-one-patient-out table, and the
# run on all patients that ships. Usage: train.sh RUN POOL... (each POOL a folder under $DATA).
set -euo pipefail
DATA=${DATA:-/work/data}
RUNS=${RUNS:-/work/runs}
STEPS=${STEPS:-2500}
run=$1; shift
pools=(); for p in "$@"; do pools+=("$DATA/$p"); done
mkdir -p "$RUNS"
resume=(); [ -d "$RUNS/$run/last" ] && resume=(--resume)
if [ ${#resume[@]} -eq 0 ]; then
  init=(--init default --val-data "$DATA/valmix" --steps "$STEPS" --ngf 16 --depth 8 --crop 256 --batch-size 2
        --lr 1e-4 --decay-start 0.3 --lambda-l1 1000 --lambda-grad 1000 --lambda-msssim 1000 --lambda-gan 0
        --dropout 0 --normalisation robust --upsample resize --soft-from-se --val-every 500 --val-views 12
        --num-workers 0 --seed 0)
else
  init=(--steps "$STEPS" --num-workers 0)
fi
OMP_NUM_THREADS=${THREADS:-1} dexrt train "${pools[@]}" -o "$RUNS/$run" "${resume[@]}" "${init[@]}" --no-progress
