"""YOLOv5's random perspective: the warp draw, the image warp, and the labels it moves with its box filter.

Labels are ``(n, 5)`` float arrays ``[cls, x1, y1, x2, y2]`` in pixels. Every random draw comes from the ``rng``
passed in, so a sample is a pure function of its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from detector.data.letterbox import PAD_GREY
from detector.data.photometric import to_bgr

PAD_COLOR4 = (PAD_GREY,) * 4  # the padding grey with the alpha channel of the fast-warp layout


def box_candidates(
    box1: np.ndarray,
    box2: np.ndarray,
    *,
    wh_thr: float,
    ar_thr: float,
    area_thr: float,
    eps: float = 1e-16,
) -> np.ndarray:
    """Mask of boxes worth keeping after a warp: box1 (4, n) before (scaled), box2 (4, n) after, xyxy pixels.

    Kept when both sides exceed ``wh_thr`` px, the area ratio exceeds ``area_thr`` and the aspect ratio is
    below ``ar_thr``.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def resample_segments(segments: Sequence[np.ndarray], n: int = 1000) -> np.ndarray:
    """Each closed polygon (k, 2) resampled to n points evenly spaced in vertex index; returns (m, n, 2)."""
    out = np.empty((len(segments), n, 2), np.float64)
    for i, s in enumerate(segments):
        s = np.concatenate((s, s[:1]), 0)
        t = np.linspace(0, len(s) - 1, n)
        k = np.arange(len(s))
        out[i, :, 0] = np.interp(t, k, s[:, 0])
        out[i, :, 1] = np.interp(t, k, s[:, 1])
    return out


def _segment_boxes(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bounding box (m, 4) of the points (m, k, 2) of each polygon inside the image; zeros if none are."""
    x, y = points[..., 0], points[..., 1]
    inside = (x >= 0) & (y >= 0) & (x <= width) & (y <= height)
    boxes = np.stack(
        (
            np.where(inside, x, np.inf).min(1),
            np.where(inside, y, np.inf).min(1),
            np.where(inside, x, -np.inf).max(1),
            np.where(inside, y, -np.inf).max(1),
        ),
        1,
    )
    boxes[~inside.any(1)] = 0
    return boxes


@dataclass(frozen=True)
class Warp:
    """One drawn random_perspective transform: 3x3 matrix ``M`` (source -> output pixels), its scale gain and
    the output size (width, height)."""

    M: np.ndarray
    scale: float
    size: tuple[int, int]
    perspective: bool

    @property
    def axis_aligned(self) -> bool:
        """Scale and translation only (no rotation, shear or perspective): rectangles stay rectangles."""
        return not self.perspective and self.M[0, 1] == 0 and self.M[1, 0] == 0


def draw_warp(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    degrees: float,
    translate: float,
    scale: float,
    shear: float,
    perspective: float,
    border: tuple[int, int] = (0, 0),
) -> Warp:
    """YOLOv5's random matrix M = T S R P C for a source of ``shape`` (h, w) and an output of that size plus
    ``2 * border`` (h, w).

    Own code: albumentations' Affine/Perspective draw a different matrix and have no YOLOv5 candidate filter.
    """
    height, width = shape[0] + border[0] * 2, shape[1] + border[1] * 2
    C = np.eye(3)
    C[0, 2], C[1, 2] = -shape[1] / 2, -shape[0] / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective, 2)
    R = np.eye(3)
    a = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=a, scale=s)
    S = np.eye(3)
    S[0, 1], S[1, 0] = np.tan(rng.uniform(-shear, shear, 2) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * height
    return Warp(T @ S @ R @ P @ C, float(s), (width, height), bool(perspective))


def source_roi(warp: Warp, shape: tuple[int, int], margin: int = 2) -> tuple[int, int, int, int]:
    """The source rectangle (x1, y1, x2, y2) an affine warp reads, bilinear neighbours included, within shape."""
    w, h = warp.size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float)
    src = corners @ np.linalg.inv(warp.M).T
    (x1, y1), (x2, y2) = np.floor(src[:, :2].min(0)) - margin, np.ceil(src[:, :2].max(0)) + margin + 1
    x1, x2 = int(np.clip(x1, 0, shape[1])), int(np.clip(x2, 0, shape[1]))
    y1, y2 = int(np.clip(y1, 0, shape[0])), int(np.clip(y2, 0, shape[0]))
    return x1, y1, max(x1, x2), max(y1, y2)


def apply_warp(im: np.ndarray, warp: Warp) -> np.ndarray:
    """Warp a BGR or BGRA image (returned with the same channels); only the pixels in source_roi are read."""
    # 4-channel warps give identical pixels and are ~1.7x faster in OpenCV (SIMD path), so warp BGRA.
    im4 = cv2.cvtColor(im, cv2.COLOR_BGR2BGRA) if im.shape[2] == 3 else im
    if warp.perspective:
        out = cv2.warpPerspective(im4, warp.M, dsize=warp.size, borderValue=PAD_COLOR4)
    else:
        out = cv2.warpAffine(im4, warp.M[:2], dsize=warp.size, borderValue=PAD_COLOR4)
    return to_bgr(out) if im.shape[2] == 3 else out


_HALF = np.array([[1.0, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
_MINUS_HALF = np.array([[1.0, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])


def warp_targets(
    targets: np.ndarray,
    segments: Sequence[np.ndarray],
    warp: Warp,
    *,
    wh_thr: float,
    ar_thr: float,
    area_thr: float,
    area_thr_segments: float,
    pixel_centres: bool,
) -> np.ndarray:
    """Move pixel-xyxy targets through the warp and keep the box candidates.

    Boxes come from the warped corners, or from the polygons resampled to 1000 points when ``segments`` match
    the targets (then ``area_thr_segments`` applies). OpenCV's warps map pixel centres (index i at coordinate i),
    labels use pixel edges (pixel i spans [i, i + 1)): YOLOv5 moves labels by M itself, which puts them
    0.5 * (s - 1) px from their pixels at warp scale s. ``pixel_centres`` moves them by M's pixel-edge form
    x -> M(x - 0.5) + 0.5 instead, so that they stay on their pixels.
    """
    n = len(targets)
    if not n:
        return targets
    M, (width, height) = warp.M, warp.size
    if pixel_centres:
        M = _HALF @ M @ _MINUS_HALF
    use_segments = len(segments) == n
    if use_segments:
        pts = resample_segments(segments)
        xy = pts @ M[:2, :2].T + M[:2, 2]
        if warp.perspective:
            xy = xy / (pts @ M[2, :2] + M[2, 2])[..., None]
        new = _segment_boxes(xy, width, height)
    else:
        corners = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)
        xy = corners @ M[:2, :2].T + M[:2, 2]
        if warp.perspective:
            xy = xy / (corners @ M[2, :2] + M[2, 2])[:, None]
        xy = xy.reshape(n, 4, 2)
        new = np.concatenate((xy.min(1), xy.max(1)), 1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    thr = area_thr_segments if use_segments else area_thr
    keep = box_candidates(targets[:, 1:5].T * warp.scale, new.T, wh_thr=wh_thr, ar_thr=ar_thr, area_thr=thr)
    targets = targets[keep]
    targets[:, 1:5] = new[keep]
    return targets
