#!/usr/bin/env bash
# Fetches, on this machine, the wheels the device machine lacks (its image has torch, Lightning, torchmetrics, OpenCV,
# scipy, matplotlib, setuptools; not Hydra, albumentations or pycocotools) for its Python 3.12, into .whl/
# (git-ignored). bench/gpu/check.sh installs them there; detector itself it builds there from the working tree that
# travels (no wheel of it here, so none can be stale). Run from the repository root.
set -euo pipefail
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64"
$PY -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $PLAT -d .whl \
    hydra-core==1.3.8 omegaconf==2.3.1 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 \
    pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 simsimd==6.5.16 stringzilla==5.3.2 \
    pycocotools==2.0.11
# antlr4's runtime is a source distribution only: build its (pure Python) wheel here
$PY -m pip wheel --quiet --disable-pip-version-check --no-deps -w .whl antlr4-python3-runtime==4.9.3
# YOLOv5 7.0 for the side-by-side step, apart in .whl/yolov5 (installed to its own path, never on ours): PyPI's
# yolov5 and what it imports that the image lacks (ultralytics for check_requirements, roboflow and its imports,
# setuptools<81 for pkg_resources, huggingface-hub<0.25 for its hub check). Its other needs (pandas, seaborn,
# requests, psutil, tensorboard) are in the image.
mkdir -p .whl/yolov5
$PY -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $PLAT -d .whl/yolov5 \
    yolov5==7.0.14 ultralytics==8.4.190 roboflow==1.7.3 requests-toolbelt==1.0.0 python-dotenv==1.2.4 \
    pillow-avif-plugin==1.6.0 'setuptools<81' huggingface-hub==0.24.7
ls -la .whl .whl/yolov5
du -sh .whl
