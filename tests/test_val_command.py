"""`python -m detector.val`: a checkpoint validated on its own gives the metrics its run logged, with the pictures,
the per-class table and COCO-format predictions; a missing checkpoint is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest
from hydra import compose, initialize_config_dir

from callbacks.results_csv import read_results
from detector import CONF_DIR
from detector.val import CheckpointError, validate


def compose_val(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="val", overrides=overrides)


def test_val_reproduces_the_runs_last_validation_and_writes_its_files(trained_run, tmp_path):
    # batch 16 = the run's val batch (2 x 8): the same rect shapes, so the same letterboxed pixels
    cfg = compose_val([f"ckpt={trained_run / 'weights' / 'last.ckpt'}", f"run_dir={tmp_path}", "batch_size=16",
                       "workers=0", "save_json=true", "accelerator=cpu"])  # fmt: skip
    metrics = validate(cfg)
    last = read_results(trained_run / "results.csv")[-1]
    for key in ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss",
                "val/obj_loss", "val/cls_loss"):  # fmt: skip
        assert metrics[key] == pytest.approx(last[key], rel=1e-4, abs=1e-9), key  # results.csv keeps 5 digits
    for name in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png",
                 "val_batch0_labels.jpg", "val_batch0_pred.jpg"):  # fmt: skip
        im = cv2.imread(str(tmp_path / name))
        assert im is not None and im.std() > 1, name
    assert (tmp_path / "per_class.txt").read_text().splitlines()[1].split()[:2] == ["all", "8"]
    rows = json.loads((tmp_path / "predictions.json").read_text())
    stems = {p.stem for p in (trained_run.parent / "shapes" / "images" / "val").iterdir()}
    assert rows and {str(r["image_id"]) for r in rows} <= stems
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and 0 < r["score"] <= 1 for r in rows)


def test_a_missing_or_foreign_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        validate(compose_val([f"ckpt={tmp_path / 'nope.ckpt'}", f"run_dir={tmp_path}"]))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        validate(compose_val([f"ckpt={tmp_path / 'junk.ckpt'}", f"run_dir={tmp_path}"]))
    proc = subprocess.run([sys.executable, "-m", "detector.val", f"ckpt={tmp_path / 'nope.ckpt'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "nope.ckpt: no such file" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
