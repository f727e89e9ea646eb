#!/usr/bin/env bash
# Issue 13's GPU check, as one prepared command for the device tool (about 7-8 min on an H100, not yet run there):
#   here, first:  bash bench/gpu/wheels.sh   (Hydra, albumentations, pycocotools and detector itself as wheels, and
#                 YOLOv5 7.0's in .whl/yolov5: the device runs the detector wheel, so rebuild it after changing src/)
#   device tool:  run(command="bash bench/gpu/check.sh", carry=[".whl"], timeout_s=600)
# Most important first, so that a run cut short still brings the headline back (every figure lands in $OUT):
# 1. Ours end to end: yolov5s, 640 px, batch 64, 16-mixed, SGD, 2048 generated JPEGs of 240-480 px cached in RAM,
#    4 epochs; images/second of the batch loop and the epoch with validation, from bench/epoch_clock.py's stamps.
# 2. YOLOv5 7.0's own train.py on the same data and settings (its wheels installed on a path of their own; epoch
#    stamps through its callbacks, bench/epoch.py's child; AMP on by its own check), and the ratio of the two.
# 3. bench/train_step.py in AMP: our DetectorModule under Lightning against the bare loop (yolov5s 640 batch 64,
#    then the CPU sizes), the Lightning-overhead target.
# QUICK=1 runs tiny sizes on the CPU (a check of the script itself, not a measurement); a local test passes the
# image's other packages in PYTHONPATH and a Python 3.12 as PY.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
BASE_PYTHONPATH=${PYTHONPATH:-}  # empty on the device
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
Y5SITE=/tmp/site-yolov5
if [ -d .whl/yolov5 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $Y5SITE .whl/yolov5/*.whl \
    || exit 1
fi
export PYTHONPATH="$PWD/bench:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  E2E="model=yolov5n imgsz=64 batch_size=8 epochs=2 trainer=cpu workers=2"; N=64
  Y5="--model yolov5n --imgsz 64 --batch 8 --epochs 2 --workers 2 --device cpu"
  STEP="--models yolov5n --sizes 64 --batch 4 --steps 6 --warmup 2 --rounds 1"; STEP2=""
else
  E2E="model=yolov5s imgsz=640 batch_size=64 epochs=4 trainer=gpu workers=14"; N=2048
  Y5="--model yolov5s --imgsz 640 --batch 64 --epochs 4 --workers 14 --device 0"
  STEP="--models yolov5s --sizes 640 --batch 64 --steps 40 --warmup 8 --rounds 3"
  STEP2="--models yolov5n yolov5s --sizes 320 640 --batch 16 --steps 40 --warmup 8 --rounds 3"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/device.txt"
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, \
'cuda', torch.cuda.is_available())" | tee -a "$OUT/device.txt"

echo "== 1. ours end to end ($E2E, cache ram, scratch-low, SGD)" | tee "$OUT/e2e.txt"
DATA=$($PY -c "from pathlib import Path; from dataloader import bench_dataset; \
print(bench_dataset(Path('/tmp/bench-data-$N'), n=$N))")
$PY -m detector.train "data=$DATA" $E2E hyp=scratch-low cache=ram seed=0 trainer.enable_progress_bar=false \
  "hydra.run.dir=/tmp/gpu-check-run" +callbacks.epoch_clock._target_=epoch_clock.EpochClock \
  "+callbacks.epoch_clock.path=$OUT/stamps.json" > "$OUT/e2e.log" 2>&1 || { tail -30 "$OUT/e2e.log"; exit 1; }
$PY bench/gpu/epoch_rate.py ours "$OUT/stamps.json" "$N" | tee -a "$OUT/e2e.txt"

echo "== 2. YOLOv5 7.0 end to end ($Y5, cache ram, scratch-low, SGD)" | tee -a "$OUT/e2e.txt"
mkdir -p /tmp/yolov5-config
for f in Arial.ttf Arial.Unicode.ttf; do  # its plots are off; fonts only spare it a download attempt
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && cp -n /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf \
    /tmp/yolov5-config/$f
done
# YOLOv5's path first, so that its setuptools (pkg_resources) and huggingface-hub are the ones it imports; ours stays
# off its path
Y5ENV=(env "PYTHONPATH=$Y5SITE:$PWD/bench${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}" TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
  ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS=1 YOLOv5_AUTOINSTALL=false YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false
  HF_HUB_OFFLINE=1 MPLBACKEND=Agg YOLOV5_CONFIG_DIR=/tmp/yolov5-config)
HYP=$("${Y5ENV[@]}" $PY -c "import yolov5, pathlib; print(pathlib.Path(yolov5.__file__).parent)" | tail -1)
"${Y5ENV[@]}" $PY bench/epoch.py --yolov5-child --data "$DATA" $Y5 --cache ram \
  --hyp "$HYP/data/hyps/hyp.scratch-low.yaml" --out /tmp/gpu-check-yolov5 --stamps "$OUT/yolov5-stamps.json" \
  > "$OUT/yolov5.log" 2>&1 || { tail -30 "$OUT/yolov5.log"; exit 1; }
grep -a -m2 -E "AMP: " "$OUT/yolov5.log" | tee -a "$OUT/e2e.txt"
$PY bench/gpu/epoch_rate.py YOLOv5 "$OUT/yolov5-stamps.json" "$N" "$OUT/stamps.json" | tee -a "$OUT/e2e.txt"

echo "== 3. training step, ours under Lightning against the bare loop" | tee "$OUT/train_step.txt"
$PY bench/train_step.py $STEP 2>&1 | tee -a "$OUT/train_step.txt"
[ -n "$STEP2" ] && $PY bench/train_step.py $STEP2 2>&1 | tee -a "$OUT/train_step.txt"
exit 0
