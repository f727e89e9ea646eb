#!/usr/bin/env bash
# Checks that the dependency floors in pyproject.toml are true: builds a virtual environment from scratch with every
# dependency pinned at its floor ("name>=X" installed as "name==X"), the package itself (editable, no deps) and
# pytest, then imports every module and runs a smoke subset of the tests (one tiny end-to-end training included).
# Exits non-zero when an install, an import or a test fails.   Usage: make test-min   (or tools/test_min.sh)
#   PYTHON=python3.10   the interpreter the environment is built from (default python3)
#   MIN_VENV=path       where it is built (default .venv-min, git-ignored; rebuilt when the pins change)
#   MIN_FRESH=1         rebuild it even when the pins have not changed
#   MIN_PINS="torch==2.6.0 torchvision==0.21.0"   replace the pins of these packages (for trying other floors)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MIN_VENV:-.venv-min}
start=$SECONDS
export NO_ALBUMENTATIONS_UPDATE=1  # no update check (a network call) on import

# pyproject's [project].dependencies with ">=" turned into "==", one a line; a dependency without a plain floor is
# an error (nothing would check it).
pins=$(MIN_PINS=${MIN_PINS:-} "$PYTHON" - <<'EOF'
import os, re, sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        sys.exit(f"test_min: reading pyproject.toml needs Python >= 3.11 or tomli ({sys.executable})")
with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
override = {norm(p.split("==")[0]): p for p in os.environ["MIN_PINS"].split()}
for dep in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][^,;\s]*)\s*", dep)
    if m is None:
        sys.exit(f"test_min: cannot pin {dep!r}: write its floor as name>=version")
    print(override.pop(norm(m[1]), f"{m[1]}=={m[2]}"))
if override:
    sys.exit(f"test_min: MIN_PINS names no dependency of pyproject.toml: {' '.join(override.values())}")
EOF
)
echo "test_min: pins: $(echo $pins)"

# The environment is built from scratch unless it was built from these very pins by this interpreter and nothing
# has been installed into it or removed since (pip freeze unchanged): then it is kept (MIN_FRESH=1 rebuilds anyway).
PY=$VENV/bin/python
freeze() { "$PY" -m pip freeze --disable-pip-version-check --exclude-editable; }
stamp="$(echo $pins) pytest | $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
if [[ -z ${MIN_FRESH:-} && -x $PY && -f $VENV/.test_min_stamp && -f $VENV/.test_min_freeze ]] &&
    [[ "$(cat "$VENV/.test_min_stamp")" == "$stamp" ]] &&
    [[ "$(freeze 2>/dev/null)" == "$(cat "$VENV/.test_min_freeze")" ]]; then
    echo "test_min: $VENV was built from these pins: kept (MIN_FRESH=1 rebuilds it)"
else
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # shellcheck disable=SC2086  # one argument per pin
    "$PY" -m pip install --quiet --disable-pip-version-check $pins pytest
    freeze >"$VENV/.test_min_freeze"
    echo "$stamp" >"$VENV/.test_min_stamp"
fi
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps -e .
# as make's .venv: an editable install hides plugins/ from Hydra's plugin scan, a .pth shows it
"$PY" -c "import pathlib, site, sys; pathlib.Path(site.getsitepackages()[0], 'detector_hydra_plugins.pth')\
.write_text(sys.argv[1] + '\n')" "$PWD/plugins"
# broken requirements fail the run; with MIN_PINS below a floor, the package's own requirement is broken on purpose
if ! check=$("$PY" -m pip check 2>&1); then
    echo "$check"
    [[ -n ${MIN_PINS:-} && -z $(grep -v '^detector ' <<<"$check" || true) ]] || exit 1
fi
# shellcheck disable=SC2086
"$PY" - $pins <<'EOF'
import sys
from importlib.metadata import version

print(" ".join(f"{name}=={version(name)}" for name in (pin.split("==")[0] for pin in sys.argv[1:])))
EOF
echo "test_min: environment ready in $((SECONDS - start)) s (the versions above)"

# every module of the package's packages (pyproject's list: callbacks and the Hydra plugin included) and the
# libraries it imports lazily, each imported on its own
"$PY" - <<'EOF'
import importlib, pkgutil, sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

with open("pyproject.toml", "rb") as f:
    packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
names = list(packages)
for pkg in packages:
    names += [m.name for m in pkgutil.iter_modules(importlib.import_module(pkg).__path__, pkg + ".")]
names += ["detector.train", "detector.val", "detector.predict", "detector.export"]
# what the package imports lazily (inside functions, or where a failed import is caught)
names += ["albumentations", "torchmetrics.detection", "pycocotools.coco", "pycocotools.mask", "scipy.cluster.vq",
          "scipy.ndimage", "torch.utils.tensorboard", "tensorboard", "matplotlib.pyplot", "PIL.Image", "cv2", "yaml"]
names = list(dict.fromkeys(names))
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the run fails
        failed.append(f"  {name}: {type(e).__name__}: {e}")
print(f"test_min: imported {len(names) - len(failed)} of {len(names)} modules")
if failed:
    sys.exit("test_min: imports failed:\n" + "\n".join(failed))
EOF

# a smoke subset (about a minute on 2 cores): config, loss, metrics (pycocotools through torchmetrics),
# augmentation (albumentations), anchors (scipy's k-means), YOLOv5 checkpoint files (torch's safe loading), one tiny
# training run with each of the csv and TensorBoard loggers, then val, predict and TorchScript export of a run
"$PY" -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/test_config.py tests/test_schedule.py tests/test_loss.py tests/test_metrics.py tests/test_augment.py \
    tests/test_boxes_reference.py tests/test_dataset.py tests/test_anchors.py \
    tests/test_yolov5_weights.py::test_a_pickle_that_calls_code_runs_nothing \
    tests/test_yolov5_weights.py::test_commands_read_a_yolov5_file_as_a_checkpoint \
    tests/test_train_e2e.py::test_one_epoch_run_writes_results_and_checkpoints \
    "tests/test_train_e2e.py::test_other_loggers_receive_the_epochs_metrics[tensorboard]" \
    tests/test_val_command.py::test_val_reproduces_the_runs_last_validation_and_writes_its_files \
    tests/test_predict_command.py::test_predicted_boxes_are_the_models_forward_and_nms \
    tests/test_export_command.py::test_torchscript_matches_the_checkpoint
echo "test_min: the floors of pyproject.toml install and pass ($((SECONDS - start)) s)"
