"""YOLOv5's confusion matrix on a hand-made example, and the validation pictures drawn from it."""

from __future__ import annotations

import cv2
import numpy as np

from detector.confusion import confusion_matrix
from detector.metrics import ap_per_class
from detector.plots.results import PANELS, plot_results
from detector.plots.validation import plot_validation


def test_counts_match_a_hand_made_example():
    labels = np.array([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [0, 50, 50, 60, 60]], float)
    det = np.array([
        [0, 0, 10, 10, 0.9, 0],  # label 0, right class
        [20, 20, 30, 31, 0.8, 0],  # label 1 (IoU 0.91), wrong class
        [80, 80, 90, 90, 0.7, 1],  # nothing there: background
        [50, 50, 60, 60, 0.1, 0],  # under conf 0.25: dropped, so label 2 is missed
        [0, 0, 10, 11, 0.6, 1],  # label 0 again (IoU 0.91), already paired at IoU 1: background
    ])  # fmt: skip
    images = [
        (det, labels),
        (np.zeros((0, 6)), np.array([[1, 0, 0, 5, 5]], float)),  # a missed label in an image without detections
        (np.array([[0, 0, 5, 5, 0.5, 0]]), np.zeros((0, 5))),  # a detection in an image without labels
    ]
    m = confusion_matrix(images, nc=2, conf_thres=0.25, iou_thres=0.45)
    # rows: predicted 0, 1, background; columns: true 0, 1, background
    assert m.tolist() == [[1, 1, 1], [0, 0, 2], [1, 1, 0]]


def test_a_detection_pairs_with_its_best_label_and_a_label_with_its_best_detection():
    labels = np.array([[0, 0, 0, 10, 10], [1, 2, 0, 12, 10]], float)  # IoU with the detection: 0.67, 1.0
    det = np.array([[2, 0, 12, 10, 0.9, 1]])
    m = confusion_matrix([(det, labels)], nc=2, conf_thres=0.25, iou_thres=0.45)
    assert m.tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]  # label 0 missed, not paired a second time
    two = np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 11, 0.95, 0]])  # both on label 0: the IoU 1 one pairs
    m = confusion_matrix([(two, labels[:1])], nc=2, conf_thres=0.25, iou_thres=0.45)
    assert m.tolist() == [[1, 0, 1], [0, 0, 0], [0, 0, 0]]


def test_pictures_are_drawn_for_many_classes_and_classes_without_detections(tmp_path):
    rng = np.random.default_rng(0)
    nc = 25  # above the legend and annotation limits
    tp = rng.random((300, 10)) < 0.5
    res = ap_per_class(tp, rng.random(300), rng.integers(0, nc - 1, 300), rng.integers(0, nc, 200))
    m = rng.integers(0, 9, (nc + 1, nc + 1))
    paths = plot_validation(res, m, {i: f"c{i}" for i in range(nc)}, tmp_path)
    assert sorted(p.name for p in paths) == ["F1_curve.png", "PR_curve.png", "P_curve.png", "R_curve.png",
                                             "confusion_matrix.png"]  # fmt: skip
    for p in paths:
        im = cv2.imread(str(p))
        assert im is not None and im.std() > 1, p.name
    rows = [dict.fromkeys(PANELS, float(e)) | {"epoch": float(e)} for e in range(6)]
    im = cv2.imread(str(plot_results(rows, tmp_path / "results.png")))
    assert im.shape[:2] == (900, 1800) and im.std() > 1
