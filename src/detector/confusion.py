"""YOLOv5's detection confusion matrix: ``(nc + 1) x (nc + 1)``, rows predicted class, columns true class, the last
row and column "background" (a missed label, a detection without a label)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from detector.boxes import box_iou  # the IoU the metrics match with (YOLOv5 eps)


def confusion_matrix(
    images: Iterable[tuple[np.ndarray, np.ndarray]], nc: int, conf_thres: float, iou_thres: float
) -> np.ndarray:
    """Counts over images of ``(n, 6)`` detections ``[x1, y1, x2, y2, conf, cls]`` and ``(m, 5)`` labels
    ``[cls, x1, y1, x2, y2]``, as YOLOv5 counts them.

    Detections below ``conf_thres`` are dropped. Labels and detections pair up by IoU above ``iou_thres`` whatever
    their classes, each detection and each label at most once, highest IoU first; a pair adds to
    ``[det class, label class]``, an unpaired label to ``[nc, label class]``, an unpaired detection to
    ``[det class, nc]``.
    """
    matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)
    for det, labels in images:
        det = np.asarray(det, dtype=np.float64).reshape(-1, 6)
        labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
        det = det[det[:, 4] > conf_thres]
        gt_cls, det_cls = labels[:, 0].astype(np.int64), det[:, 5].astype(np.int64)
        pairs = _pairs(labels[:, 1:5], det[:, :4], iou_thres)
        paired_gt, paired_det = set(pairs[:, 0].tolist()), set(pairs[:, 1].tolist())
        for gi, di in pairs:
            matrix[det_cls[di], gt_cls[gi]] += 1
        for gi in set(range(len(labels))) - paired_gt:
            matrix[nc, gt_cls[gi]] += 1
        for di in set(range(len(det))) - paired_det:
            matrix[det_cls[di], nc] += 1
    return matrix


def _pairs(gt: np.ndarray, det: np.ndarray, iou_thres: float) -> np.ndarray:
    """``(k, 2)`` [label index, detection index]: candidates above the threshold, highest IoU first, each
    detection kept once, then each label kept once (YOLOv5's order of the two de-duplications)."""
    if not len(gt) or not len(det):
        return np.zeros((0, 2), dtype=np.int64)
    iou = box_iou(torch.from_numpy(gt), torch.from_numpy(det)).numpy()
    gi, di = np.nonzero(iou > iou_thres)
    cand = np.stack([gi, di, iou[gi, di]], 1)
    if len(cand) > 1:
        cand = cand[np.argsort(-cand[:, 2], kind="stable")]
        cand = cand[np.unique(cand[:, 1], return_index=True)[1]]
        cand = cand[np.argsort(-cand[:, 2], kind="stable")]
        cand = cand[np.unique(cand[:, 0], return_index=True)[1]]
    return cand[:, :2].astype(np.int64)
