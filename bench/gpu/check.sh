#!/usr/bin/env bash
# Issue 34's GPU acceptance run: one prepared command for the device tool, about 6 minutes of an H100 at most,
# installs included. Stages run in order of importance, each under its own time cap; as soon as one ends, its figures
# are one JSON line in $OUT/stages.jsonl (status ok, failed, timeout or skipped; "why" says why), and the next stage
# runs whatever the last one did, so a run cut short still brings back the first stages.
#   here, first:  bash bench/gpu/wheels.sh   (Hydra, albumentations, pycocotools and YOLOv5 7.0 as wheels in .whl/)
#   device tool:  run(command="bash bench/gpu/check.sh", carry=[".whl"], timeout_s=420)
# Stages, with their caps in seconds on the GPU (the run also stops itself TOTAL=340 s after its start, a stage never
# getting more than what is left):
# 0. preflight (40): the wheels installed; detector built and installed from the working tree that travelled (a fresh
#    copy, pip --no-build-isolation; never a wheel), checked file by file against it; versions, imports, CUDA.
#    nvidia-smi samples GPU utilisation and memory every 200 ms for the whole run ($OUT/gpu.csv).
# 1. ours end to end (75): yolov5s, 640 px, batch 64, 16-mixed, SGD, hyp scratch-low, cache=ram, default workers,
#    1536 generated JPEGs of 240-480 px (bench/dataloader.py), 256 of them to validate on, 3 epochs, val.coco=never:
#    images/second of the batch loop (median from the second epoch, bench/gpu/run_probe.py's stamps), GPU busy
#    fraction (share of 200 ms samples with utilisation > 0, and the mean) during those loops, peak CUDA memory, and
#    an assertion that the AMP check passed and the run trained in 16-mixed.
# 2. YOLOv5 7.0's train.py (65) on the same data and settings (its default 8 workers; its wheels on a path of
#    their own, bench/epoch.py's child; AMP on by its own check): images/second, and ours / YOLOv5.
# 3. bench/train_step.py (35): our step under Lightning against the bare loop in AMP, yolov5s 640 batch 64.
# 4. AMP against fp32 (40): the built-in shapes data, yolov5n, 160 px, 6 epochs, val.coco=never, 16-mixed and
#    32-true side by side (run together): losses and mAP of the last epoch, mAP@0.5 by epoch.
# 5. resume (45): a run with trainer.deterministic=true SIGKILLed in its second epoch and resumed with
#    ckpt_path=last ends bit-identical to the same run uninterrupted (bench/gpu/resume_check.py).
# 6. evolution (40): 2 children with trainer=gpu, forked from the preloading server: each trained on CUDA.
# 7. buffer check on NCCL (60, or what is left): 2 DDP ranks; every floating-point tensor (BatchNorm statistics
#    included) equal on both ranks at every validation and checkpoint (bench/gpu/rank_probe.py). Needs 2 GPUs:
#    skipped on one.
# $OUT holds stages.jsonl, logs.txt (each stage's log tail), gpu.csv and logs.tar.gz (every stage's whole log).
# CAP0..CAP7 and TOTAL override the caps; STAGES="0 5" runs only those stages (0 installs: keep it).
# QUICK=1 runs tiny sizes on the CPU through every stage (a rehearsal of the script, not a measurement; AMP as
# bf16-mixed, stage 7 as 2 gloo ranks):
#   QUICK=1 PY=/tmp/venv-rehearse/bin/python OUT=/tmp/rehearse-out bash bench/gpu/check.sh
set -uo pipefail
ROOT=$(pwd)
SELF="$ROOT/bench/gpu/check.sh"
OUT=${OUT:-/tmp/gpu-check}
PY=${PY:-python3}
QUICK=${QUICK:-0}
WORK=${WORK:-/tmp/gpu-check-work}
REPORT="$ROOT/bench/gpu/report.py"
SITE=$WORK/site SITE_DET=$WORK/site-detector Y5SITE=$WORK/site-yolov5
if [ "$QUICK" = 1 ]; then
  TRAINER=cpu DEVICE=cpu PRECISION=bf16-mixed NEED_CUDA=""
  N=48 V=16
  E2E="model=yolov5n imgsz=64 batch_size=8 epochs=2 trainer=cpu trainer.precision=bf16-mixed"
  Y5="--model yolov5n --imgsz 64 --batch 8 --epochs 2 --workers 2 --device cpu"
  STEP="--models yolov5n --sizes 64 --batch 4 --steps 6 --warmup 2 --rounds 1"
  AMPFP32="model=yolov5n imgsz=64 batch_size=16 epochs=2 trainer=cpu trainer.limit_train_batches=4 val.coco=never"
  RESUME="--trainer cpu --epochs 3 --n-train 32"
  DDP="trainer=cpu trainer.devices=2 trainer.strategy=ddp"
  CAPS=(300 400 400 300 400 600 400 400) TOTAL=${TOTAL:-3600}
else
  TRAINER=gpu DEVICE=cuda PRECISION=16-mixed NEED_CUDA=--need-cuda
  N=1536 V=256
  E2E="model=yolov5s imgsz=640 batch_size=64 epochs=3 trainer=gpu"
  Y5="--model yolov5s --imgsz 640 --batch 64 --epochs 3 --workers 8 --device 0"
  STEP="--models yolov5s --sizes 640 --batch 64 --steps 24 --warmup 6 --rounds 2"
  AMPFP32="model=yolov5n epochs=6 trainer=gpu val.coco=never"
  RESUME="--trainer gpu --epochs 3"
  DDP="trainer=ddp trainer.devices=2"
  CAPS=(40 75 65 35 40 45 40 60) TOTAL=${TOTAL:-340}
fi
for i in 0 1 2 3 4 5 6 7; do
  v="CAP$i"
  CAPS[i]=${!v:-${CAPS[i]}}
done
# YOLOv5's environment: its path first (its setuptools for pkg_resources, its huggingface-hub); ours off its path
Y5ENV=(env "PYTHONPATH=$Y5SITE:$ROOT/bench${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}" TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
  ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS=1 YOLOv5_AUTOINSTALL=false YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false
  HF_HUB_OFFLINE=1 MPLBACKEND=Agg YOLOV5_CONFIG_DIR=$WORK/yolov5-config)

inner() {  # a stage's training, stopped 12 s before the stage's cap so that its report still runs on what it left
  timeout -k 5 $((STAGE_CAP > 30 ? STAGE_CAP - 12 : STAGE_CAP)) "$@"
}

outcome() {  # a stage's exit status from its run's ($1) and its report's ($2): a run stopped at the cap first
  case $1 in 124 | 137) return 124 ;; esac
  [ "$2" = 0 ] || return "$2"
  return "$1"
}

skip() {  # a stage that does not apply: its reason, exit 3
  printf '{"why": "%s"}\n' "$1" > "$WORK/stage$STAGE.json"
  exit 3
}

stage0() {  # installs and preflight
  if [ -d "$ROOT/.whl" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$ROOT"/.whl/*.whl || return 1
  fi
  if [ -d "$ROOT/.whl/yolov5" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$Y5SITE" \
      "$ROOT"/.whl/yolov5/*.whl || return 1
  fi
  # detector from the working tree: a clean copy (no build/ left from elsewhere) built and installed as pyproject.toml
  # lays it out (callbacks/, conf/ and the Hydra plugin mapped into it)
  rm -rf "$WORK/detector-src" "$SITE_DET" && mkdir -p "$WORK/detector-src"
  (cd "$ROOT" && cp -r pyproject.toml README.md src callbacks conf plugins "$WORK/detector-src/") || return 1
  find "$WORK/detector-src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$SITE_DET" \
    "$WORK/detector-src" || return 1
  $PY "$REPORT" preflight --site "$SITE_DET" --tree "$ROOT" --t-start "$T_START" --smi "$WORK/smi.txt" $NEED_CUDA \
    --out "$WORK/stage0.json"
}

e2e_data() {  # the generated JPEGs (made once), validating on the first V: prints the data yaml
  $PY - "$WORK/bench-data-$N" "$N" "$V" <<'EOF'
import sys
from pathlib import Path

import yaml
from dataloader import bench_dataset

root, n, v = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
spec = yaml.safe_load(bench_dataset(root, n=n).read_text())
(root / "val.txt").write_text("".join(f"./images/{i:04d}.jpg\n" for i in range(v)))
(root / "e2e.yaml").write_text(yaml.safe_dump({**spec, "val": "val.txt"}))
print(root / "e2e.yaml")
EOF
}

stage1() {  # ours end to end
  local data rc
  data=$(e2e_data) || return 1
  inner $PY -m detector.train "data=$data" $E2E hyp=scratch-low cache=ram seed=0 val.coco=never \
    trainer.enable_progress_bar=false "hydra.run.dir=$WORK/e2e" +callbacks.run_probe._target_=run_probe.RunProbe \
    "+callbacks.run_probe.path=$WORK/e2e-probe.json"
  rc=$?
  $PY "$REPORT" e2e --probe "$WORK/e2e-probe.json" --log "$STAGE_LOG" --run-dir "$WORK/e2e" --gpu-csv "$OUT/gpu.csv" \
    --n "$N" --precision "$PRECISION" --amp-device "$DEVICE" --t0 "$STAGE_T0" --out "$WORK/stage1.json"
  outcome $rc $?
}

stage2() {  # YOLOv5 7.0 on the same data and settings
  local data hyp rc
  "${Y5ENV[@]}" $PY -c "import yolov5" 2>/dev/null || skip "YOLOv5 not installed (no .whl/yolov5)"
  data=$(e2e_data) || return 1
  mkdir -p "$WORK/yolov5-config"
  for f in Arial.ttf Arial.Unicode.ttf; do  # its plots are off; fonts only spare it a download attempt
    [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] \
      && cp -n /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf "$WORK/yolov5-config/$f"
  done
  hyp=$("${Y5ENV[@]}" $PY -c "import yolov5, pathlib; print(pathlib.Path(yolov5.__file__).parent)" | tail -1)
  "${Y5ENV[@]}" $PY "$ROOT/bench/epoch.py" --yolov5-child --data "$data" $Y5 --cache ram \
    --hyp "$hyp/data/hyps/hyp.scratch-low.yaml" --out "$WORK/yolov5" --stamps "$WORK/yolov5-stamps.json"
  rc=$?
  $PY "$REPORT" yolov5 --stamps "$WORK/yolov5-stamps.json" --log "$STAGE_LOG" --ours "$WORK/e2e-probe.json" \
    --n "$N" --out "$WORK/stage2.json"
  outcome $rc $?
}

stage3() {  # our step under Lightning against the bare loop
  $PY "$ROOT/bench/train_step.py" $STEP || return 1
  $PY "$REPORT" train_step --log "$STAGE_LOG" --out "$WORK/stage3.json"
}

stage4() {  # AMP against fp32 on the built-in data, both runs at once
  local common a f rc=0
  $PY -c "from detector.data.config import load_data_config as f; f('shapes', '$DETECTOR_DATASETS')" || return 1
  common="data=shapes seed=0 $AMPFP32 trainer.enable_progress_bar=false +callbacks.run_probe._target_=run_probe.RunProbe
    +callbacks.run_probe.path=probe.json"
  inner $PY -m detector.train $common "trainer.precision=$PRECISION" "hydra.run.dir=$WORK/amp" \
    > "$WORK/logs/amp.log" 2>&1 &
  a=$!
  inner $PY -m detector.train $common trainer.precision=32-true "hydra.run.dir=$WORK/fp32" \
    > "$WORK/logs/fp32.log" 2>&1 &
  f=$!
  wait $a || { rc=$?; tail -n 30 "$WORK/logs/amp.log"; }
  wait $f || { rc=$?; tail -n 30 "$WORK/logs/fp32.log"; }
  grep -a -m1 "AMP check" "$WORK/logs/amp.log"
  $PY "$REPORT" amp_fp32 --amp "$WORK/amp" --fp32 "$WORK/fp32" --precision "$PRECISION" --out "$WORK/stage4.json"
  outcome $rc $?
}

stage5() {  # SIGKILL and ckpt_path=last, deterministic: bit-identical
  $PY "$ROOT/bench/gpu/resume_check.py" --work "$WORK/resume" --logs "$WORK/logs" $RESUME --out "$WORK/stage5.json" \
    && return 0
  tail -n 30 "$WORK"/logs/resume-*.log
  return 1
}

tiny_data() {  # the built-in shapes, a few images: prints the data yaml
  $PY -c "from detector.data.shapes import ensure_shapes_dataset as e; print(e('$WORK/shapes-$1', n_train=$1, n_val=8))"
}

stage6() {  # an evolution of 2 children, forked from the preloading server
  local data rc
  data=$(tiny_data 16) || return 1
  inner $PY -m detector.train -m hydra/sweeper=evolve hydra.sweeper.generations=1 hydra.sweeper.population=2 \
    "hydra.sweeper.sweep_dir=$WORK/evolve" hydra.sweeper.seed=3 "data=$data" epochs=1 imgsz=64 batch_size=8 \
    workers=0 "trainer=$TRAINER" logger=csv callbacks.autoanchor.gen=50 trainer.enable_progress_bar=false \
    +callbacks.run_probe._target_=run_probe.RunProbe +callbacks.run_probe.path=probe.json
  rc=$?
  $PY "$REPORT" evolve --sweep "$WORK/evolve" --children 2 --device "$DEVICE" --out "$WORK/stage6.json"
  outcome $rc $?
}

stage7() {  # rank 0's and rank 1's tensors at every validation and checkpoint under DDP
  local gpus data rc
  if [ "$QUICK" != 1 ]; then
    gpus=$($PY -c "import torch; print(torch.cuda.device_count())")
    [ "${gpus:-0}" -ge 2 ] || skip "${gpus:-0} GPU"
  fi
  data=$(tiny_data 32) || return 1
  rm -f "$WORK/ranks.jsonl"
  inner $PY -m detector.train "data=$data" epochs=2 imgsz=64 batch_size=16 workers=2 $DDP logger=csv nbs=16 \
    callbacks.autoanchor.gen=50 hyp.warmup_epochs=0.5 schedule.min_warmup_iters=3 val.coco=never \
    trainer.enable_progress_bar=false "hydra.run.dir=$WORK/ddp" +callbacks.rank_probe._target_=rank_probe.RankProbe \
    "+callbacks.rank_probe.path=$WORK/ranks.jsonl"
  rc=$?
  $PY "$REPORT" ranks --probe "$WORK/ranks.jsonl" --world 2 --out "$WORK/stage7.json"
  outcome $rc $?
}

if [ "${1:-}" = stage ]; then  # one stage, in its own process under its cap (run_stage below), in a folder of its own
  mkdir -p "$WORK/run$2" && cd "$WORK/run$2" && "stage$2"
  exit $?
fi

NAMES=(preflight ours_end_to_end yolov5_end_to_end train_step amp_vs_fp32 resume evolution ddp_buffers)
run_stage() {  # N: the stage under its cap (and the run's deadline), then its line in stages.jsonl
  local n=$1 cap=${CAPS[$1]} left rc wall t0 f
  local name=${NAMES[$1]}
  left=$((DEADLINE - $(date +%s)))
  [ "$cap" -gt "$left" ] && cap=$left
  export STAGE=$n STAGE_CAP=$cap STAGE_LOG="$WORK/logs/stage$n-$name.log" STAGE_T0
  t0=$(date +%s%N)
  STAGE_T0=$(date +%s.%N)
  rm -f "$WORK/stage$n.json"
  touch "$WORK/logs/.stage$n"
  if [ "$cap" -lt 10 ]; then
    rc=-1
  else
    echo "== stage $n $name (cap ${cap} s)"
    timeout -k 10 "$cap" bash "$SELF" stage "$n" > "$STAGE_LOG" 2>&1
    rc=$?
  fi
  wall=$((($(date +%s%N) - t0) / 1000000))
  wall=$((wall / 1000)).$(printf %03d $((wall % 1000)))
  $PY "$REPORT" record --stage "$n" --name "$name" --rc "$rc" --wall "$wall" --cap "$cap" --note "out of time" \
    --figures "$WORK/stage$n.json" --stages "$OUT/stages.jsonl" \
    || printf '{"stage": %d, "name": "%s", "status": "%s", "rc": %d}\n' "$n" "$name" \
      "$([ "$rc" = 0 ] && echo ok || echo failed)" "$rc" | tee -a "$OUT/stages.jsonl"
  if [ -f "$STAGE_LOG" ]; then
    { echo "== stage $n $name: rc $rc, $wall s"; tail -n "$([ "$rc" = 0 ] && echo 12 || echo 60)" "$STAGE_LOG"; } \
      >> "$OUT/logs.txt"
  fi
  if [ "$rc" != 0 ]; then  # the other logs the stage wrote
    for f in $(find "$WORK/logs" -name '*.log' -newer "$WORK/logs/.stage$n" ! -name "stage$n-*"); do
      { echo "-- $(basename "$f")"; tail -n 20 "$f"; } >> "$OUT/logs.txt"
    done
  fi
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2> /dev/null
}

T_START=$(date +%s)
DEADLINE=$((T_START + TOTAL))
rm -rf "$WORK" && mkdir -p "$OUT" "$WORK/logs"
rm -f "$OUT/stages.jsonl" "$OUT/logs.txt" "$OUT/gpu.csv" "$OUT/logs.tar.gz"
BASE_PYTHONPATH=${PYTHONPATH:-}  # empty on the device
export ROOT OUT PY QUICK WORK SITE SITE_DET Y5SITE T_START BASE_PYTHONPATH PYTHONUNBUFFERED=1
export DETECTOR_DATASETS=$WORK/datasets
export PYTHONPATH="$SITE_DET:$SITE:$ROOT/bench/gpu:$ROOT/bench:$ROOT${BASE_PYTHONPATH:+:$BASE_PYTHONPATH}"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$WORK/smi.txt" 2>&1
  nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
    > "$OUT/gpu.csv" 2>&1 &
  SAMPLER=$!
  trap 'kill $SAMPLER 2> /dev/null' EXIT
else
  echo "no nvidia-smi: no GPU samples" > "$OUT/gpu.csv"
fi
for n in ${STAGES:-0 1 2 3 4 5 6 7}; do
  run_stage "$n"
done
echo "== done in $(($(date +%s) - T_START)) s: $OUT/stages.jsonl"
cut -c1-300 "$OUT/stages.jsonl"
exit 0
