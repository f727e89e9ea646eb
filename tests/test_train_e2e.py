"""End to end: tiny training runs through the real entry point write what a run must write."""

from __future__ import annotations

import json
import logging
import math
import re

import cv2
import numpy as np
import pytest
import torch

from callbacks.progress import TRAIN_HEADER
from callbacks.results_csv import COLUMNS, read_results
from detector.data.shapes import ensure_shapes_dataset
from detector.schedule import TrainingSchedule
from detector.train import run
from tests.helpers import compose_train

DEFAULT_P3_ANCHORS = torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]]) / 8


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return ensure_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=16, n_val=8)


def tiny_cfg(data, run_dir, *extra):
    return compose_train(
        [
            f"data={data}",
            f"run_dir={run_dir}",
            "trainer=cpu",
            "logger=csv",
            "imgsz=64",
            "batch_size=8",
            "workers=0",
            "callbacks.autoanchor.gen=50",
            *extra,
        ]
    )


PROBE = ("+callbacks.probe._target_=tests.helpers.Fp16Probe",)


def probe(run_dir) -> dict:
    return json.loads((run_dir / "fp16.json").read_text())


def test_one_epoch_run_writes_results_and_checkpoints(tiny_data, tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="detector.callbacks.model_summary"):
        fitness = run(
            tiny_cfg(tiny_data, tmp_path, "epochs=1", *PROBE, f"+callbacks.probe.path={tmp_path / 'fp16.json'}")
        )
    assert math.isfinite(fitness)
    rows = read_results(tmp_path / "results.csv")
    assert len(rows) == 1 and list(rows[0]) == list(COLUMNS)
    assert all(math.isfinite(v) for v in rows[0].values())
    assert rows[0]["train/box_loss"] > 0 and rows[0]["val/obj_loss"] > 0
    for name in ("config.yaml", "lr.png", "labels.jpg", "train_batch0.jpg", "train_batch1.jpg"):
        assert (tmp_path / name).stat().st_size > 0, name
    # the pictures of the end of a run (ValidationPlots), real images of their figure sizes at 150 dpi
    sizes = {"results.png": (900, 1800), "PR_curve.png": (900, 1350), "F1_curve.png": (900, 1350),
             "P_curve.png": (900, 1350), "R_curve.png": (900, 1350), "confusion_matrix.png": (1350, 1800)}  # fmt: skip
    for name, hw in sizes.items():
        im = cv2.imread(str(tmp_path / name))
        assert im is not None and im.shape[:2] == hw and im.std() > 1, name  # not a blank canvas
    for name in ("val_batch0_labels.jpg", "val_batch0_pred.jpg"):
        assert cv2.imread(str(tmp_path / name)).shape[0] >= 64, name
    table = (tmp_path / "per_class.txt").read_text().splitlines()
    assert table[0].split() == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    assert table[1].split()[:2] == ["all", "8"] and len(table) >= 3  # all 8 val images, then one row per class
    assert sorted(p.name for p in tmp_path.rglob("*.ckpt")) == ["best.ckpt", "last.ckpt"]  # none of Lightning's
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = torch.load(tmp_path / "weights" / name, map_location="cpu", weights_only=True)
        state = ckpt["state_dict"]
        assert "model.model.24.anchors" in state
        assert "current_model_state" in ckpt  # EMA weights in state_dict, raw weights beside them
        assert ckpt["last_opt_step"] >= 0
        assert ckpt["hyper_parameters"]["nc"] == 6
    # AutoAnchor found the default anchors a poor fit for 64 px images and the checkpoint carries the new ones.
    anchors = state["model.model.24.anchors"]
    assert not torch.allclose(anchors[0], DEFAULT_P3_ANCHORS)
    # A fresh fit trains from fp16-rounded weights and AutoAnchor's anchors (YOLOv5's model.half().float()).
    assert probe(tmp_path) == {"all": True, "anchors": True}
    # YOLOv5's console: its columns, the epoch's final line (mean losses of the epoch's batches), the all line
    lines = [line.rstrip() for line in re.split(r"[\r\n]", capsys.readouterr().out)]
    assert lines.count(TRAIN_HEADER) == 1
    final = [line for line in lines if line.lstrip().startswith("0/0") and "2/2" in line][-1].split()
    assert final[:2] == ["0/0", "0G"] and final[6] == "64:"  # epoch, memory (CPU), ..., size
    losses = [float(v) for v in final[2:5]]
    assert losses == pytest.approx([rows[0][f"train/{k}"] for k in ("box_loss", "obj_loss", "cls_loss")], rel=1e-3)
    all_row = next(line.split() for line in lines if line.split()[:1] == ["all"])
    assert all_row[:2] == ["all", "8"] and float(all_row[5]) == pytest.approx(rows[0]["metrics/mAP_0.5"], abs=1e-3)
    # YOLOv5's model summary line (YOLOv5 7.0 counts yolov5n as 214 layers too)
    assert "yolov5n summary: 214 layers, 1772035 parameters, 1772035 gradients" in caplog.text


def schedule_of(cfg, nb: int) -> TrainingSchedule:
    hyp = cfg.hyp
    return TrainingSchedule(
        nb=nb, epochs=cfg.epochs, batch_size=cfg.batch_size, lr0=hyp.lr0, momentum=hyp.momentum,
        warmup_bias_lr=hyp.warmup_bias_lr, lrf=hyp.lrf, warmup_epochs=hyp.warmup_epochs,
        warmup_momentum=hyp.warmup_momentum, **cfg.schedule,
    )  # fmt: skip


def test_optimizer_steps_follow_yolov5_rule(tiny_data, tmp_path):
    # 16 images, batch 4 -> nb = 4; accumulate ramps 1 -> 16 over the 100-iteration minimum warmup.
    epochs, bs, nb = 3, 4, 4
    cfg = tiny_cfg(tiny_data, tmp_path, f"epochs={epochs}", f"batch_size={bs}", "autoanchor=false",
                   "trainer.log_every_n_steps=1")  # fmt: skip
    run(cfg)
    ckpt = torch.load(tmp_path / "weights" / "last.ckpt", map_location="cpu", weights_only=True)
    expected = schedule_of(cfg, nb)
    # By hand: during warmup accumulate = round(1 + 15 * ni / 100), so steps fall at ni = 0, 1, 2, 3, 5, 7, 9.
    assert expected.optimizer_steps() == 7
    assert ckpt["global_step"] == 7
    assert ckpt["last_opt_step"] == 9
    import csv

    rows = list(csv.DictReader((tmp_path / "logs" / "metrics.csv").open()))
    # Every batch logged the lr, momentum and accumulation the module applied: the schedule's plan.
    steps = [r for r in rows if r.get("lr/pg0")]
    plan = expected.plan()
    assert len(steps) == epochs * nb
    np.testing.assert_allclose([[float(r[f"lr/pg{j}"]) for j in range(3)] for r in steps], plan.lr, rtol=1e-6)
    np.testing.assert_allclose([float(r["momentum"]) for r in steps], plan.momentum, rtol=1e-6)
    assert [int(float(r["accumulate"])) for r in steps] == plan.accumulate.tolist()
    # train/*_loss: each epoch's mean of its batches' losses (equal batches here), whose sums the "loss" rows hold
    for epoch in range(epochs):
        batch_losses = [float(r["loss"]) for r in rows if r.get("loss") and int(r["epoch"]) == epoch]
        (row,) = [r for r in rows if r.get("train/box_loss") and int(r["epoch"]) == epoch]
        assert len(batch_losses) == nb
        total = sum(float(row[f"train/{k}_loss"]) for k in ("box", "obj", "cls"))
        assert total == pytest.approx(np.mean(batch_losses), rel=1e-6)
    # COCO mAP (slow pycocotools) is computed at the final epoch only (val.coco=final).
    coco_epochs = sorted({int(r["epoch"]) for r in rows if r.get("metrics/coco_mAP")})
    assert coco_epochs == [epochs - 1]


def test_resume_continues_schedule_and_step_rule(tiny_data, tmp_path):
    """A run stopped after epoch 0 and resumed trains epochs 1-2 at the lr and step count of an uninterrupted run.

    Short warmup (3 iterations) so the resumed epochs are past it, on the per-epoch schedule."""
    whole, first, second = tmp_path / "whole", tmp_path / "a", tmp_path / "b"
    common = ("epochs=3", "autoanchor=false", "hyp.warmup_epochs=0.5", "schedule.min_warmup_iters=3", "nbs=16")
    run(tiny_cfg(tiny_data, whole, *common))
    stop = ("+callbacks.stop._target_=tests.helpers.StopAfterEpochs", "+callbacks.stop.epochs=1")
    run(tiny_cfg(tiny_data, first, *common, *stop))
    ckpt = torch.load(first / "weights" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0
    resume = (f"ckpt_path={first / 'weights' / 'last.ckpt'}", *PROBE, f"+callbacks.probe.path={second / 'fp16.json'}",
              "resume_may_differ=[callbacks.probe,callbacks.stop]")  # fmt: skip
    # the stored config comes back, but for the allowed keys set here (the probe added, the stop removed)
    run(tiny_cfg(tiny_data, second, *common, *resume), overrides=[*resume, "~callbacks.stop"])
    assert probe(second)["all"] is False  # a resumed fit keeps its trained weights as they are
    rows, ref = read_results(second / "results.csv"), read_results(whole / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r, w in zip(rows, ref[1:], strict=True):
        assert [r[f"x/lr{j}"] for j in range(3)] == [w[f"x/lr{j}"] for j in range(3)]
    resumed = torch.load(second / "weights" / "last.ckpt", map_location="cpu", weights_only=True)
    uninterrupted = torch.load(whole / "weights" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 2
    steps = schedule_of(tiny_cfg(tiny_data, whole, *common), nb=2).optimizer_steps()
    assert resumed["global_step"] == uninterrupted["global_step"] == steps
    assert resumed["last_opt_step"] == uninterrupted["last_opt_step"]


def test_training_runs_on_the_good_files_of_a_broken_dataset(tiny_data, tmp_path):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(tiny_data.parent, root, ignore=shutil.ignore_patterns("*.cache"))
    data = root / "data.yaml"
    data.write_text(data.read_text().replace(str(tiny_data.parent), str(root)))
    images, labels = root / "images" / "train", root / "labels" / "train"
    files = sorted(images.glob("*.jpg"))
    (images / "zero.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("not an image")
    (labels / files[0].with_suffix(".txt").name).write_text("9 0.5 0.5 0.1 0.1\n")  # class >= nc
    (labels / files[1].with_suffix(".txt").name).write_text("0 0.5 0.5 0.1\n")  # four columns
    (labels / files[2].with_suffix(".txt").name).write_text("0 1.5 0.5 0.1 0.1\n")  # outside [0, 1]
    (labels / files[3].with_suffix(".txt").name).write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")  # duplicate
    (labels / files[4].with_suffix(".txt").name).unlink()  # missing label file
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.suffix in (".jpg", ".txt")}

    fitness = run(tiny_cfg(data, tmp_path / "run", "epochs=1", "autoanchor=false"))
    assert math.isfinite(fitness)
    report = (tmp_path / "run" / "dataset_train.txt").read_text()
    for line in (
        "1 zero-byte image files dropped",
        "1 files with an image extension that are not readable images dropped",
        "1 label files with a class id >= nc, images dropped",
        "1 label files with a wrong column count, images dropped",
        "1 label files with coordinates outside [0, 1], images dropped",
        "1 duplicate label rows removed (1 files)",
        "1 missing label files (images kept as background)",
    ):
        assert line in report, line
    assert len(read_results(tmp_path / "run" / "results.csv")) == 1
    # Nothing in the user's dataset was changed.
    assert {p: p.read_bytes() for p in before} == before


def test_bf16_mixed_run_passes_the_amp_check_and_trains(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("DETECTOR_AMP_DECISION", raising=False)
    fitness = run(tiny_cfg(tiny_data, tmp_path, "epochs=1", "trainer.precision=bf16-mixed", "autoanchor=false"))
    assert math.isfinite(fitness)
    rows = read_results(tmp_path / "results.csv")
    assert len(rows) == 1 and all(math.isfinite(v) for v in rows[0].values()) and rows[0]["train/box_loss"] > 0
    assert "precision: bf16-mixed" in (tmp_path / "config.yaml").read_text()  # the check kept it


def test_a_failed_amp_check_trains_in_full_precision(tiny_data, tmp_path, monkeypatch):
    from detector import amp_check

    monkeypatch.delenv("DETECTOR_AMP_DECISION", raising=False)
    monkeypatch.setattr(amp_check, "check_amp", lambda *a, **k: "2 of 5 full-precision detections have no match")
    run(tiny_cfg(tiny_data, tmp_path, "epochs=1", "trainer.precision=bf16-mixed", "autoanchor=false"))
    assert "precision: 32-true" in (tmp_path / "config.yaml").read_text()
    ckpt = torch.load(tmp_path / "weights" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["detector_config"]["trainer"]["precision"] == "32-true"  # a resume keeps the decision


@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_other_loggers_receive_the_epochs_metrics(tiny_data, tmp_path, logger):
    if logger == "mlflow":
        pytest.importorskip("mlflow")  # the [mlflow] extra
    run(tiny_cfg(tiny_data, tmp_path, "epochs=1", f"logger={logger}", "callbacks.autoanchor.gen=10"))
    if logger == "tensorboard":
        assert (
            list((tmp_path / "logs").glob("events.out.tfevents.*")) and not (tmp_path / "logs" / "metrics.csv").exists()
        )
    else:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        (exp,) = [e for e in client.search_experiments() if e.name == "train"]
        (mlrun,) = client.search_runs([exp.experiment_id])
        assert "metrics/mAP_0.5" in mlrun.data.metrics and "train/box_loss" in mlrun.data.metrics
