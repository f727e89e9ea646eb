"""YOLOv5-definition detection metrics and the COCO numbers of DetectionEvaluator."""

import numpy as np
import pytest
import torch

from detector.boxes import box_iou
from detector.metrics import (
    IOU_THRESHOLDS,
    DetectionEvaluator,
    ap_per_class,
    compute_ap,
    fitness,
    format_per_class_table,
    match_predictions,
    smooth,
)


def _det(rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def _lab(rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


# ---------------------------------------------------------------- matching


def test_one_label_two_detections_only_best_is_tp():
    labels = _lab([[0, 0, 0, 100, 100]])
    dets = _det([[0, 0, 100, 88, 0.9, 0], [0, 0, 100, 62, 0.8, 0]])  # IoU 0.88 and 0.62
    correct = match_predictions(dets, labels)
    assert correct.shape == (2, 10) and correct.dtype == torch.bool
    assert correct[0].tolist() == [True] * 8 + [False] * 2  # 0.5 .. 0.85
    # the second detection would match on its own, but the label is taken wherever the first one qualifies
    assert not correct[1].any()


def test_label_goes_to_lowest_index_claimant_as_in_yolov5():
    """YOLOv5 does not re-sort by IoU before the per-label step: the lower detection index wins."""
    labels = _lab([[0, 0, 0, 100, 100]])
    dets = _det([[0, 0, 100, 62, 0.9, 0], [0, 0, 100, 88, 0.8, 0]])  # the more confident one has IoU 0.62
    correct = match_predictions(dets, labels)
    assert correct[0].tolist() == [True, True, True] + [False] * 7  # 0.5, 0.55, 0.6
    assert correct[1].tolist() == [False] * 3 + [True] * 5 + [False] * 2  # alone from 0.65 to 0.85


def test_threshold_columns_for_iou_072_and_class_must_match():
    labels = _lab([[1, 0, 0, 100, 100]])
    dets = _det([[0, 0, 100, 72, 0.5, 1], [0, 0, 100, 72, 0.4, 2]])
    correct = match_predictions(dets, labels)
    assert correct[0].tolist() == [True] * 5 + [False] * 5  # 0.5..0.7 true, 0.75..0.95 false
    assert not correct[1].any()


def test_empty_matching_inputs():
    assert match_predictions(_det([]), _lab([[0, 0, 0, 1, 1]])).shape == (0, 10)
    assert not match_predictions(_det([[0, 0, 1, 1, 0.5, 0]]), _lab([])).any()


def _oracle_match(det, lab, iouv):
    """Per threshold: each detection claims its best-IoU label; each label keeps its lowest-index claimant."""
    iou = box_iou(lab[:, 1:], det[:, :4])
    out = torch.zeros(len(det), len(iouv), dtype=torch.bool)
    for k, t in enumerate(iouv):
        ok = (iou >= t) & (lab[:, 0:1] == det[:, 5])
        claims = {}
        for d in range(len(det)):
            cands = [lb for lb in range(len(lab)) if ok[lb, d]]
            if cands:
                claims[d] = max(cands, key=lambda lb, d=d: iou[lb, d].item())
        for lb in set(claims.values()):
            out[min(d for d, c in claims.items() if c == lb), k] = True
    return out


def test_matching_agrees_with_a_loop_oracle_on_random_scenes():
    rng = np.random.default_rng(0)
    for _ in range(60):
        m, n = rng.integers(1, 6), rng.integers(1, 10)
        xy, wh = rng.uniform(0, 50, (m, 2)), rng.uniform(10, 30, (m, 2))
        lab = torch.tensor(np.hstack([rng.integers(0, 2, (m, 1)), xy, xy + wh]), dtype=torch.float32)
        boxes = np.hstack([xy, xy + wh])[rng.integers(0, m, n)] + rng.normal(0, 3, (n, 4))
        conf = np.sort(rng.uniform(0, 1, (n, 1)), 0)[::-1]
        det = torch.tensor(np.hstack([boxes, conf, rng.integers(0, 2, (n, 1))]), dtype=torch.float32)
        assert torch.equal(match_predictions(det, lab), _oracle_match(det, lab, IOU_THRESHOLDS))


# ---------------------------------------------------------------- AP, P/R, fitness


def test_compute_ap_hand_case():
    # 3 labels; detections by confidence: TP, FP, TP, FP
    recall = np.array([1, 1, 2, 2]) / 3
    precision = np.array([1, 1 / 2, 2 / 3, 2 / 4])
    # envelope on [0, r, 1]: 1 up to r=1/3, 2/3 up to r=2/3, then linear from (2/3, 1/2) down to (1, 0).
    # 101-point trapezoid: points 0..33 -> 1, 34..66 -> 2/3, 67..100 -> 1.5 * (1 - x)
    values = np.array([1.0] * 34 + [2 / 3] * 33 + [1.5 * (1 - i / 100) for i in range(67, 101)])
    by_hand = 0.01 * (values.sum() - (values[0] + values[-1]) / 2)
    assert by_hand == pytest.approx(0.63915)
    assert compute_ap(recall, precision)[0] == pytest.approx(by_hand, abs=1e-12)
    assert compute_ap(recall, precision, "continuous")[0] == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))
    with pytest.raises(ValueError, match="unknown AP method"):
        compute_ap(recall, precision, "coco")


def test_evaluator_hand_case_both_ap_methods():
    labels = _lab([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30], [0, 40, 40, 50, 50]])
    dets = _det(
        [
            [0, 0, 10, 10, 0.9, 0],
            [100, 100, 110, 110, 0.8, 0],
            [20, 20, 30, 30, 0.7, 0],
            [200, 200, 210, 210, 0.6, 0],
        ]
    )
    for method, expected in (("interp", 0.63915), ("continuous", 5 / 9)):
        ev = DetectionEvaluator(1, ap_method=method, coco=False)
        ev.update([dets], [labels])
        res = ev.compute()
        assert res["mAP_0.5"] == pytest.approx(expected)
        assert res["mAP_0.5:0.95"] == pytest.approx(expected)


def test_precision_recall_at_max_smoothed_f1():
    # 4 labels. P and R are interpolated linearly in confidence between detections and held below the last.
    # Above 0.898: P 1, R <= 0.75 (F1 <= .857); 0.898 -> 0.4 a ramp to P .75; at 0.399 the last TP gives
    # P .8, R 1 (F1 .889), flat down to conf 0: that plateau is wider than the 101-tap filter, so it wins.
    conf = np.array([0.9, 0.899, 0.898, 0.4, 0.399])
    tp = np.repeat(np.array([1, 1, 1, 0, 1], dtype=bool)[:, None], 10, 1)
    res = ap_per_class(tp, conf, np.zeros(5), np.zeros(4))
    assert res.p[0] == pytest.approx(0.8) and res.r[0] == pytest.approx(1.0)
    assert res.f1[0] == pytest.approx(2 * 0.8 / 1.8)
    assert res.px[res.conf_index] < 0.399
    assert (res.tp[0], res.fp[0]) == (4, 1)
    assert res.f1_curve[0].max() == pytest.approx(2 * 0.8 / 1.8)


def test_ap_per_class_ignores_unlabelled_predicted_classes_and_zeroes_missing():
    tp = np.ones((3, 10), dtype=bool)
    res = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.array([0, 5, 5]), np.array([0, 2]))
    assert res.classes.tolist() == [0, 2]
    assert res.ap[1].tolist() == [0.0] * 10 and res.p[1] == 0 and res.r[1] == 0
    assert res.ap[0, 0] == pytest.approx(0.995)


def test_smooth_is_a_101_tap_edge_padded_box_filter():
    y = np.zeros(1000)
    y[500] = 1.0
    s = smooth(y, 0.1)
    assert s.shape == (1000,)
    assert np.count_nonzero(s > 0) == 101 and s.max() == pytest.approx(1 / 101)
    assert np.allclose(smooth(np.full(1000, 0.3), 0.1), 0.3)


def test_fitness_weights():
    assert fitness({"mAP_0.5": 1.0, "mAP_0.5:0.95": 0.0, "precision": 1.0}) == pytest.approx(0.1)
    assert fitness({"mAP_0.5": 0.0, "mAP_0.5:0.95": 1.0}) == pytest.approx(0.9)
    assert fitness({"mAP_0.5": 0.5, "mAP_0.5:0.95": 0.3}) == pytest.approx(0.32)


# ---------------------------------------------------------------- evaluator


def _perfect_batch():
    labels = [_lab([[0, 10, 10, 50, 50], [1, 60, 60, 100, 120]]), _lab([[1, 5, 5, 30, 40]])]
    dets = [_det([[10, 10, 50, 50, 0.9, 0], [60, 60, 100, 120, 0.8, 1]]), _det([[5, 5, 30, 40, 0.7, 1]])]
    return dets, labels


def test_perfect_predictions():
    ev = DetectionEvaluator(3, names={0: "a", 1: "b", 2: "c"})
    ev.update(*_perfect_batch())
    res = ev.compute()
    assert res["precision"] == pytest.approx(1.0) and res["recall"] == pytest.approx(1.0)
    # YOLOv5's 101-point trapezoid tops out at 0.995 (the [.., 1] padding drops the last point to 0)
    assert res["mAP_0.5"] == pytest.approx(0.995) and res["mAP_0.5:0.95"] == pytest.approx(0.995)
    assert res["coco/mAP"] == pytest.approx(1.0) and res["coco/mAP_50"] == pytest.approx(1.0)
    assert res["classes"].tolist() == [0, 1]
    assert res["labels_per_class"].tolist() == [1, 2] and res["images_per_class"].tolist() == [1, 2]
    assert res["maps"].tolist() == pytest.approx([0.995, 0.995, 0.995])
    ev_c = DetectionEvaluator(3, ap_method="continuous", coco=False)
    ev_c.update(*_perfect_batch())
    assert ev_c.compute()["mAP_0.5:0.95"] == pytest.approx(1.0)


def test_false_positives_on_unlabelled_image_and_missed_labels_count():
    dets, labels = _perfect_batch()
    ev = DetectionEvaluator(3)
    ev.update(dets, labels)
    ev.update([_det([[0, 0, 20, 20, 0.95, 1]])], [_lab([])])  # confident FP on an image with no labels
    ev.update([_det([])], [_lab([[0, 0, 0, 10, 10]])])  # a label nobody found
    res = ev.compute()
    assert res["n_images"] == 4 and res["n_labels"] == 4
    assert res["labels_per_class"].tolist() == [2, 2]
    assert res["r_per_class"][0] == pytest.approx(0.5)
    assert res["p_per_class"][1] < 1.0
    assert res["mAP_0.5"] < 0.9 and 0.0 < res["coco/mAP"] < 1.0


def test_nothing_seen_and_no_labels_give_zeros():
    keys = ("precision", "recall", "mAP_0.5", "mAP_0.5:0.95", "coco/mAP", "coco/mAP_50")
    ev = DetectionEvaluator(2)
    assert all(ev.compute()[k] == 0.0 for k in keys)
    ev.update([_det([[0, 0, 10, 10, 0.9, 0]]), _det([])], [_lab([]), _lab([])])
    res = ev.compute()
    assert all(res[k] == 0.0 for k in keys) and res["n_images"] == 2 and len(res["ap_per_class"]) == 0
    ev.reset()
    ev.update([_det([])], [_lab([[1, 0, 0, 10, 10]])])
    res = ev.compute()
    assert all(res[k] == 0.0 for k in keys) and res["classes"].tolist() == [1]


def test_reset_forgets():
    ev = DetectionEvaluator(3)
    ev.update(*_perfect_batch())
    ev.reset()
    ev.update([_det([[200, 200, 220, 220, 0.9, 0]])], [_lab([[0, 0, 0, 10, 10]])])
    res = ev.compute()
    assert res["n_images"] == 1 and res["mAP_0.5"] == 0.0 and res["coco/mAP"] == 0.0


def test_bad_inputs_are_clear_errors():
    ev = DetectionEvaluator(2, coco=False)
    with pytest.raises(ValueError, match="out of range"):
        ev.update([_det([])], [_lab([[5, 0, 0, 1, 1]])])
    with pytest.raises(ValueError, match="prediction tensors"):
        ev.update([_det([])], [])
    with pytest.raises(ValueError, match="ap_method"):
        DetectionEvaluator(2, ap_method="voc")


def test_per_class_table():
    ev = DetectionEvaluator(3, names={0: "cat", 1: "dog", 2: "cow"}, coco=False)
    ev.update(*_perfect_batch())
    lines = format_per_class_table(ev.compute(), ev.names).splitlines()
    assert len(lines) == 4 and lines[0].split()[:3] == ["Class", "Images", "Instances"]
    assert lines[1].split() == ["all", "2", "3", "1", "1", "0.995", "0.995"]
    assert lines[2].split()[:3] == ["cat", "1", "1"] and lines[3].split()[:3] == ["dog", "2", "2"]
    assert ev.table(ev.compute()) == "\n".join(lines)
