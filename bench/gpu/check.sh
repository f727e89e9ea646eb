#!/usr/bin/env bash
# Issue 13's GPU check, as one prepared command for the device tool (about 5 min on an H100):
#   here, first:  bash bench/gpu/wheels.sh   (Hydra, albumentations, pycocotools and detector itself as wheels: the
#                 device runs the detector wheel, so rebuild it after changing src/)
#   device tool:  run(command="bash bench/gpu/check.sh", carry=[".whl"], timeout_s=600)
# 1. bench/train_step.py in AMP: our DetectorModule under Lightning against the bare loop (yolov5s 640 batch 64,
#    and the CPU sizes), the Lightning-overhead target.
# 2. Ours end to end: yolov5s, 640 px, batch 64, 16-mixed, 2048 generated JPEGs of 240-480 px cached in RAM,
#    4 epochs; images/second of the batch loop and the epoch with validation, from bench/epoch_clock.py's stamps.
# YOLOv5 7.0's train.py is not in the kit yet (its pip package pulls in many more packages): step 2 prints ours only.
# QUICK=1 runs tiny sizes on the CPU (a check of the script itself, not a measurement).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/bench:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  STEP="--models yolov5n --sizes 64 --batch 4 --steps 6 --warmup 2 --rounds 1"; STEP2=""
  E2E="model=yolov5n imgsz=64 batch_size=8 epochs=2 trainer=cpu workers=2"; N=64
else
  STEP="--models yolov5s --sizes 640 --batch 64 --steps 40 --warmup 8 --rounds 3"
  STEP2="--models yolov5n yolov5s --sizes 320 640 --batch 16 --steps 40 --warmup 8 --rounds 3"
  E2E="model=yolov5s imgsz=640 batch_size=64 epochs=4 trainer=gpu workers=14"; N=2048
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/device.txt"
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, \
'cuda', torch.cuda.is_available())" | tee -a "$OUT/device.txt"

echo "== 1. training step, ours under Lightning against the bare loop" | tee "$OUT/train_step.txt"
$PY bench/train_step.py $STEP 2>&1 | tee -a "$OUT/train_step.txt"
[ -n "$STEP2" ] && $PY bench/train_step.py $STEP2 2>&1 | tee -a "$OUT/train_step.txt"

echo "== 2. ours end to end ($E2E)" | tee "$OUT/e2e.txt"
DATA=$($PY -c "from pathlib import Path; from dataloader import bench_dataset; \
print(bench_dataset(Path('/tmp/bench-data-$N'), n=$N))")
$PY -m detector.train "data=$DATA" $E2E hyp=scratch-low cache=ram seed=0 trainer.enable_progress_bar=false \
  "hydra.run.dir=/tmp/gpu-check-run" +callbacks.epoch_clock._target_=epoch_clock.EpochClock \
  "+callbacks.epoch_clock.path=$OUT/stamps.json" > "$OUT/e2e.log" 2>&1 || { tail -30 "$OUT/e2e.log"; exit 1; }
$PY - "$OUT/stamps.json" "$N" <<'PYEOF' | tee -a "$OUT/e2e.txt"
import json, statistics, sys
s, n = json.load(open(sys.argv[1])), int(sys.argv[2])
loop = [v - a for a, v in zip(s["start"][1:], s["val_start"][1:])]
epoch = [b - a for a, b in zip(s["end"], s["end"][1:])]
print(f"batch loop {statistics.median(loop):.2f} s ({n / statistics.median(loop):.0f} img/s), "
      f"epoch with validation {statistics.median(epoch):.2f} s (medians from the second epoch; {n} images)")
PYEOF
