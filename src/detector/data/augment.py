"""YOLOv5's label-aware sample augmentations: flips, MixUp and copy-paste.

Images are HWC BGR uint8. Labels are ``(n, 5)`` float arrays: ``[cls, x1, y1, x2, y2]`` in pixels for copy-paste,
``[cls, x, y, w, h]`` normalised for the flips (as YOLOv5 orders them). Every random draw comes from the ``rng``
passed in, so a sample is a pure function of its seed. Geometry is in ``geometry.py``, letterboxing in
``letterbox.py``, HSV in ``photometric.py``, the albumentations stage in ``albumentations_extras.py``.
"""

from __future__ import annotations

import cv2
import numpy as np


def mixup(
    im: np.ndarray,
    labels: np.ndarray,
    im2: np.ndarray,
    labels2: np.ndarray,
    rng: np.random.Generator,
    beta: float = 32.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two images with r ~ Beta(beta, beta) (truncating to uint8 as YOLOv5) and keep both label sets."""
    r = rng.beta(beta, beta)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


def _ioa(box: np.ndarray, boxes: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of one xyxy box with each of boxes (n, 4), over the area of each of boxes."""
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return iw * ih / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + eps)


def copy_paste(
    im: np.ndarray,
    labels: np.ndarray,
    segments: list[np.ndarray],
    p: float,
    rng: np.random.Generator,
    ioa_thr: float = 0.30,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Segment copy-paste (arXiv 2012.07177): mirror round(p * n) instances left-right and paste those that
    overlap every existing box by less than ``ioa_thr`` of its area. Acts only with polygons and p > 0.

    Own code: albumentations has no polygon copy-paste. Returns (image, labels, segments), new arrays.
    """
    n = len(segments)
    if not (p and n):
        return im, labels, segments
    w = im.shape[1]
    mask = np.zeros(im.shape[:2], np.uint8)
    labels, segments = labels.copy(), list(segments)
    for j in rng.choice(n, size=round(p * n), replace=False):
        c, x1, y1, x2, y2 = labels[j]
        box = np.array([w - x2, y1, w - x1, y2])
        if (_ioa(box, labels[:, 1:5]) < ioa_thr).all():
            labels = np.concatenate((labels, [[c, *box]]), 0)
            seg = segments[j]
            segments.append(np.stack((w - seg[:, 0], seg[:, 1]), 1))
            cv2.drawContours(mask, [seg.astype(np.int32)], -1, 1, cv2.FILLED)
    if mask.any():
        flipped_mask = cv2.flip(mask, 1).astype(bool)
        im = im.copy()
        im[flipped_mask] = cv2.flip(im, 1)[flipped_mask]
    return im, labels, segments


def flip_ud(im: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip up-down; labels are normalised xywh (y <- 1 - y, changed in place). Returns a new image."""
    if len(labels):
        labels[:, 2] = 1 - labels[:, 2]
    return cv2.flip(im, 0), labels


def flip_lr(im: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip left-right; labels are normalised xywh (x <- 1 - x, changed in place). Returns a new image."""
    if len(labels):
        labels[:, 1] = 1 - labels[:, 1]
    return cv2.flip(im, 1), labels
