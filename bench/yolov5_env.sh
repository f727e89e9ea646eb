#!/usr/bin/env bash
# Creates bench/.venv-yolov5: PyPI's yolov5==7.0.14 (YOLOv5 7.0), for side-by-side benchmarks and the lock-step
# reference. It is never a dependency of detector; see ../shared/reference/yolov5-bench-env.md for the pins.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-yolov5
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import yolov5" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install --quiet 'yolov5==7.0.14' 'setuptools<81' 'numpy<2.4' 'pillow<10'
fi
# Environment YOLOv5 needs to run offline (print with: source <(bench/yolov5_env.sh --print-env)).
if [ "${1:-}" = "--print-env" ]; then
  cat <<ENV
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS=1 YOLOv5_AUTOINSTALL=false
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false HF_HUB_OFFLINE=1 MPLBACKEND=Agg
ENV
fi
