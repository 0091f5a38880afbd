#!/usr/bin/env bash
# `make demo`: the whole job on the built-in phantom default, small enough for a laptop CPU.
# synth -> split -> prepare -> train -> calibrate -> evaluate (thresholds) -> explain -> predict.
set -euo pipefail
OUT=${1:-demo}
CX=.venv/bin/cxrdx
SIZE=128        # the phantoms are synthesised at 128 px
TRAIN_SIZE=${DEMO_SIZE:-64}  # and trained at 64 px: ~14 s an epoch on 2 idle CPU cores, against ~2 min at 128 px;
                # see docs/performance.md "make demo: training that counts"
EPOCHS=${DEMO_EPOCHS:-12}  # a fixed number of epochs, so the model (and the README's test AUROC, 0.939 at 12
                # epochs) does not depend on the machine's speed; time is only a cap (DEMO_MAX_MINUTES)
MAX_MINUTES=${DEMO_MAX_MINUTES:-30}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/8 synthesise 1,500 phantom chest radiographs with known lesions and boxes"
$CX synth --out "$OUT/phantoms" --n 1500 --image-size $SIZE --seed 0
step "2/8 split by patient (70/10/20) and check for leakage"
$CX split --labels "$OUT/phantoms/Data_Entry.csv" --out "$OUT/split" --val 0.1 --test 0.2 --seed 0
$CX check-leakage "$OUT/split/train.csv" "$OUT/split/val.csv" "$OUT/split/test.csv"
step "3/8 prepare: decode once into a uint8 cache at $TRAIN_SIZE px (the training size)"
$CX prepare --labels "$OUT/split/train.csv" "$OUT/split/val.csv" "$OUT/split/test.csv" \
  --images "$OUT/phantoms/images" --image-size $TRAIN_SIZE --out "$OUT/cache"
step "4/8 train DenseNet121 from scratch at $TRAIN_SIZE px for $EPOCHS epochs (2.5 min on 2 idle cores; cap $MAX_MINUTES min)"
$CX train --data "$OUT/cache" --out "$OUT/run" --image-size $TRAIN_SIZE --epochs $EPOCHS \
  --max-minutes $MAX_MINUTES --batch-size 32 --lr 1e-3 --lr-patience 2 --patience 5
DONE=$(grep -o '"epoch": [0-9]*' "$OUT/run/history.json" | tail -1 | grep -o '[0-9]*$')
if [ "$DONE" -lt "$EPOCHS" ]; then
  printf '\n\033[1mWARNING: training stopped after %s of %s epochs (the %s-minute cap, DEMO_MAX_MINUTES, or early\nstopping): this model is weaker than the README'"'"'s demo figure, which is for %s epochs.\033[0m\n' \
    "$DONE" "$EPOCHS" "$MAX_MINUTES" "$EPOCHS"
fi
step "5/8 calibrate on the validation split: scores -> probabilities (prior shift + temperature)"
$CX calibrate --weights "$OUT/run/best.safetensors" --data "$OUT/cache" --split val \
  --out "$OUT/run/calibrated.safetensors"
step "6/8 evaluate on the test split; thresholds chosen on validation, stored in a new checkpoint"
$CX evaluate --weights "$OUT/run/calibrated.safetensors" --data "$OUT/cache" --split test --val-split val \
  --out "$OUT/report" --n-boot 200 --out-weights "$OUT/run/model.safetensors"
step "7/8 explain: Grad-CAM of 60 test images with boxes, scored against the boxes (beside chance)"
# test images that have at least one box: enough image/box pairs for a pointing-game rate to mean something
mapfile -t SAMPLE < <(awk -F, 'NR == FNR { if (FNR > 1) test[$1] = 1; next }
  FNR > 1 && ($1 in test) && !seen[$1]++ { print $1 }' "$OUT/split/test.csv" "$OUT/phantoms/BBox_List.csv" | head -60)
$CX explain --weights "$OUT/run/model.safetensors" "${SAMPLE[@]/#/$OUT/phantoms/images/}" \
  --boxes "$OUT/phantoms/BBox_List.csv" --out "$OUT/explain" --top-k 1 --quiet
step "8/8 predict on a few phantoms"
mapfile -t FEW < <(awk -F, 'NR>1 {print $1}' "$OUT/split/test.csv" | head -4)
$CX predict --weights "$OUT/run/model.safetensors" "${FEW[@]/#/$OUT/phantoms/images/}" --format table

cat <<MSG

Done. What the demo produced:
  $OUT/phantoms/            1,500 synthetic radiographs, Data_Entry.csv, BBox_List.csv
  $OUT/split/               train/val/test CSVs split by patient
  $OUT/cache/               the prepared uint8 cache training reads ($TRAIN_SIZE px)
  $OUT/run/best.safetensors the trained model (calibration fitted on validation by train)
  $OUT/run/calibrated.safetensors  the same, calibrated explicitly by cxrdx calibrate
  $OUT/run/model.safetensors  calibrated + thresholds chosen on validation by evaluate (use this one)
  $OUT/run/                 TensorBoard logs and config.json
  $OUT/report/report.html   AUROC with CIs, ROC/PR curves, calibration before/after, thresholds
  $OUT/explain/             Grad-CAM overlays (.png) and heatmaps (.npy)

Next:
  open $OUT/report/report.html
  .venv/bin/tensorboard --logdir $OUT/run
  .venv/bin/cxrdx serve --weights $OUT/run/model.safetensors      # web app on http://127.0.0.1:7860
  .venv/bin/cxrdx predict --weights $OUT/run/model.safetensors YOUR_XRAY.png
MSG
