"""YOLOv5's per-sample augmentations: letterbox, random perspective with its box filter, HSV, flips, MixUp,
copy-paste and the optional albumentations extras.

Images are HWC BGR uint8. Labels are ``(n, 5)`` float arrays: ``[cls, x1, y1, x2, y2]`` in pixels for the
geometric steps, ``[cls, x, y, w, h]`` normalised for the extras and the flips (as YOLOv5 orders them).
Every random draw comes from the ``rng`` passed in, so a sample is a pure function of its seed.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

PAD_COLOR = (114, 114, 114)
PAD_COLOR4 = (114, 114, 114, 114)


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where letterbox puts an image: scale ``ratio`` (rw, rh), resized size ``unpad`` (w, h), padding ``pad``
    (dw, dh) per side as floats (labels use these) and the integer borders (top, bottom, left, right)."""

    ratio: tuple[float, float]
    unpad: tuple[int, int]
    pad: tuple[float, float]
    borders: tuple[int, int, int, int]


def letterbox_geometry(
    hw: tuple[int, int],
    new_shape: int | tuple[int, int] = 640,
    auto: bool = False,
    scale_fill: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> LetterboxGeometry:
    """The geometry ``letterbox`` uses for an image of size ``hw`` (h, w); see ``letterbox``."""
    h, w = hw
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(new_h / h, new_w / w)
    if not scaleup:
        r = min(r, 1.0)
    ratio = (r, r)
    unpad_w, unpad_h = round(w * r), round(h * r)
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    elif scale_fill:
        dw, dh = 0, 0
        unpad_w, unpad_h = new_w, new_h
        ratio = (new_w / w, new_h / h)
    dw, dh = dw / 2, dh / 2
    borders = (round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1))
    return LetterboxGeometry(ratio, (unpad_w, unpad_h), (dw, dh), borders)


def letterbox(
    im: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: tuple[int, int, int] = PAD_COLOR,
    auto: bool = False,
    scale_fill: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to ``new_shape`` (h, w); returns (image, (rw, rh), (dw, dh)).

    ``auto`` pads only up to a multiple of ``stride``; ``scale_fill`` stretches without padding; without
    ``scaleup`` images are only shrunk. The result is always a new array.
    """
    g = letterbox_geometry(im.shape[:2], new_shape, auto, scale_fill, scaleup, stride)
    if im.shape[1::-1] != g.unpad:
        im = cv2.resize(im, g.unpad, interpolation=cv2.INTER_LINEAR)
    im = cv2.copyMakeBorder(im, *g.borders, cv2.BORDER_CONSTANT, value=color)
    return im, g.ratio, g.pad


def augment_hsv(
    im: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator, inplace: bool = False
) -> np.ndarray:
    """Random multiplicative hue/saturation/value gains through lookup tables; returns a BGR image.

    ``im`` is BGR or BGRA (alpha ignored). With all gains 0 the input is returned untouched. ``inplace`` reuses
    a BGR ``im`` for the result (a third faster than new arrays).
    Own code: YOLOv5 multiplies hue before the modulo 180; albumentations' HueSaturationValue shifts it.
    """
    if not (hgain or sgain or vgain):
        return im
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    x = np.arange(256, dtype=np.float64)
    lut = np.empty((256, 1, 3), np.uint8)
    lut[:, 0, 0] = (x * r[0]) % 180
    lut[:, 0, 1] = np.clip(x * r[1], 0, 255)
    lut[:, 0, 2] = np.clip(x * r[2], 0, 255)
    if inplace and im.shape[2] == 3:
        cv2.cvtColor(im, cv2.COLOR_BGR2HSV, dst=im)
        cv2.LUT(im, lut, dst=im)
        return cv2.cvtColor(im, cv2.COLOR_HSV2BGR, dst=im)
    hsv = cv2.cvtColor(im, cv2.COLOR_BGR2HSV)  # accepts BGRA too
    cv2.LUT(hsv, lut, dst=hsv)  # one 3-channel LUT call instead of split/merge
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def to_bgr(im: np.ndarray) -> np.ndarray:
    """Drop the alpha channel of a BGRA image (the fast-warp layout); 3-channel images pass through."""
    return cv2.cvtColor(im, cv2.COLOR_BGRA2BGR) if im.shape[2] == 4 else im


def box_candidates(
    box1: np.ndarray,
    box2: np.ndarray,
    wh_thr: float = 2,
    ar_thr: float = 100,
    area_thr: float = 0.1,
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
    degrees: float = 0.0,
    translate: float = 0.1,
    scale: float = 0.5,
    shear: float = 0.0,
    perspective: float = 0.0,
    border: tuple[int, int] = (0, 0),
) -> Warp:
    """YOLOv5's random matrix M = T S R P C for a source of ``shape`` (h, w) and an output of that size plus
    ``2 * border`` (h, w)."""
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
    wh_thr: float = 2,
    ar_thr: float = 100,
    area_thr: float = 0.1,
    area_thr_segments: float = 0.01,
    pixel_centres: bool = False,
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


def random_perspective(
    im: np.ndarray,
    targets: np.ndarray,
    segments: Sequence[np.ndarray] = (),
    degrees: float = 0.0,
    translate: float = 0.1,
    scale: float = 0.5,
    shear: float = 0.0,
    perspective: float = 0.0,
    border: tuple[int, int] = (0, 0),
    rng: np.random.Generator | None = None,
    wh_thr: float = 2,
    ar_thr: float = 100,
    area_thr: float = 0.1,
    area_thr_segments: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation/perspective (M = T S R P C); returns (image, kept targets).

    Own code: albumentations' Affine/Perspective draw a different matrix and have no YOLOv5 candidate filter.
    Output size is the input size plus ``2 * border`` (h, w), with the input's channels (BGR or BGRA). The image
    is left as it is when the border is 0 and M is the identity.
    """
    rng = rng if rng is not None else np.random.default_rng()
    warp = draw_warp(im.shape[:2], rng, degrees, translate, scale, shear, perspective, border)
    if border[0] or border[1] or (warp.M != np.eye(3)).any():
        im = apply_warp(im, warp)
    return im, warp_targets(targets, segments, warp, wh_thr, ar_thr, area_thr, area_thr_segments)


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


class AlbumentationsExtras:
    """YOLOv5's albumentations stage: each transform fires with its own ``p``, seeded from the sample's rng.

    ``transforms`` are albumentations transforms or ``{_target_: albumentations.X, ...}`` mappings.
    Transforms with p = 0 are dropped. When all are pixel-level, each one is called directly on the image
    (boxes cannot change, so the bbox bookkeeping of ``Compose`` is skipped); otherwise a ``Compose`` with
    yolo-format boxes runs.
    """

    def __init__(self, transforms: Sequence[Any] | None):
        built = [_build_transform(t) for t in (transforms or [])]
        self.transforms = [t for t in built if t.p > 0]
        self.image_only = all(isinstance(t, _albumentations().ImageOnlyTransform) for t in self.transforms)
        self.compose = None
        self._lock = threading.Lock()  # transforms keep the rng they were given: one sample at a time
        if self.transforms and not self.image_only:
            A = _albumentations()
            self.compose = A.Compose(
                self.transforms,
                bbox_params=A.BboxParams(format="yolo", label_fields=["class_labels"], clip=True),
            )

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AlbumentationsExtras({', '.join(f'{type(t).__name__}(p={t.p})' for t in self.transforms)})"

    def __call__(self, im: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Apply to a BGR(A) image and (n, 5) normalised [cls, x, y, w, h] labels; returns (image, labels).

        The image comes back unchanged (possibly BGRA) when no transform fires, else as BGR."""
        if self.compose is None:
            for t in self.transforms:
                if rng.random() < t.p:
                    py_rng = random.Random(int(rng.integers(2**32)))
                    with self._lock:
                        t.set_random_state(rng, py_rng)
                        im = t(image=to_bgr(im), force_apply=True)["image"]
            return im, labels
        py_rng = random.Random(int(rng.integers(2**32)))
        with self._lock:
            self.compose.set_random_state(rng, py_rng)
            out = self.compose(image=to_bgr(im), bboxes=labels[:, 1:5], class_labels=labels[:, 0])
        boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        cls = np.asarray(out["class_labels"], np.float32).reshape(-1, 1)
        return np.ascontiguousarray(out["image"]), np.concatenate((cls, boxes), 1)


def _albumentations():
    import albumentations

    return albumentations


def _build_transform(t: Any) -> Any:
    """An albumentations transform from itself or from a ``{_target_: ..., **kwargs}`` mapping."""
    if not isinstance(t, Mapping):
        return t
    if "_target_" not in t:
        raise ValueError(f"albumentations entry {dict(t)} has no _target_ (e.g. _target_: albumentations.Blur)")
    from hydra.utils import instantiate

    try:
        return instantiate(dict(t))
    except Exception as e:
        raise ValueError(f"cannot build albumentations transform {dict(t)}: {e}") from e
