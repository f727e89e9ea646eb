"""AutoAnchor maths: label sizes and the anchor/label ratio metric (best possible recall, fitness).

Pure numpy, no Lightning. All anchors and box sizes here are in pixels, ``(w, h)``.

Metric (YOLOv5): for a label ``wh`` and an anchor ``k``, ``x = min over sides of min(wh / k, k / wh)``
in (0, 1]; ``best = max over anchors of x``; a label is covered when ``best > 1 / thr``.
``bpr`` = fraction of labels covered, ``aat`` = mean number of anchors per label with ``x > 1 / thr``,
fitness = ``mean(best * (best > 1 / thr))``. The search is in ``anchor_search.py``, the check in
``anchor_check.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

_METRIC_CHUNK = 65536  # labels scored per block by the exact metric, bounds memory to ~10 MB per block


def label_wh(
    labels: Sequence[np.ndarray],
    sizes_wh: np.ndarray,
    imgsz: int,
    rng: np.random.Generator | None = None,
    scale_jitter: tuple[float, float] = (0.9, 1.1),
    warn: bool = True,
) -> np.ndarray:
    """Label sizes in pixels, ``(N, 2)`` float32, for images resized so that their long side is ``imgsz``.

    ``labels``: one ``(n, 5)`` ``[cls, x, y, w, h]`` normalised array per image; ``sizes_wh``: ``(n_img, 2)``
    as (w, h).
    With ``rng``, each image is also scaled by one ``U(*scale_jitter)`` draw (YOLOv5's check_anchors).
    Rows with non-finite or negative sizes and images with a non-positive shape, are dropped (logged if warn).
    """
    sizes_wh = np.asarray(sizes_wh, dtype=np.float64).reshape(-1, 2)
    if len(labels) != len(sizes_wh):
        raise ValueError(f"label_wh: {len(labels)} label arrays but {len(sizes_wh)} image sizes")
    if len(sizes_wh) == 0:
        return np.zeros((0, 2), np.float32)
    long_side = sizes_wh.max(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = sizes_wh * (imgsz / long_side)  # (w, h) of each resized image
    if rng is not None:
        scale = scale * rng.uniform(scale_jitter[0], scale_jitter[1], size=(len(sizes_wh), 1))
    arrays = [_as_label_array(lb) for lb in labels]
    counts = np.array([len(a) for a in arrays], dtype=np.int64)
    if counts.sum() == 0:
        return np.zeros((0, 2), np.float32)
    wh_norm = np.concatenate([a[:, 3:5] for a in arrays if len(a)], 0)
    wh = wh_norm * np.repeat(scale, counts, axis=0)
    ok = np.isfinite(wh).all(1) & (wh >= 0).all(1)
    if not ok.all() and warn:
        logger.warning(
            "AutoAnchor: dropped %d of %d labels with a non-finite or negative size (or from an image with a "
            "zero shape)",
            int((~ok).sum()),
            len(wh),
        )
    return wh[ok].astype(np.float32)


def _as_label_array(lb: np.ndarray) -> np.ndarray:
    """One image's labels as a 2-D float64 array (an empty array of any shape becomes ``(0, 5)``)."""
    a = np.asarray(lb, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 5))
    if a.ndim != 2 or a.shape[1] < 5:
        raise ValueError(f"label_wh: labels must be (n, 5) [cls, x, y, w, h], got shape {a.shape}")
    return a


def clean_wh(wh: np.ndarray) -> np.ndarray:
    """``(N, 2)`` float64 sizes with non-finite or negative rows removed."""
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    return wh[np.isfinite(wh).all(1) & (wh >= 0).all(1)]


def ratio_metric(anchors_px: np.ndarray, wh: np.ndarray) -> np.ndarray:
    """``(N, k)`` worst-side ratio ``x = min over sides of min(wh / k, k / wh)``; 0 where a side is 0."""
    k = np.asarray(anchors_px, dtype=np.float64).reshape(1, -1, 2)
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 1, 2)
    out = np.empty((wh.shape[0], k.shape[1]), np.float64)
    for i in range(0, len(wh), _METRIC_CHUNK):
        w = wh[i : i + _METRIC_CHUNK]
        lo, hi = np.minimum(w, k), np.maximum(w, k)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(hi > 0, lo / hi, 0.0)  # min(r, 1/r) written so that 0 or inf sizes never give NaN
        out[i : i + len(w)] = r.min(-1)
    return out


def anchor_metrics(anchors_px: np.ndarray, wh: np.ndarray, thr: float) -> tuple[float, float]:
    """``(bpr, aat)`` of anchors ``(k, 2)`` on label sizes ``(N, 2)``; ``(0.0, 0.0)`` without labels."""
    wh = clean_wh(wh)
    if len(wh) == 0:
        return 0.0, 0.0
    x = ratio_metric(anchors_px, wh)
    best = x.max(1)
    return float((best > 1 / thr).mean()), float((x > 1 / thr).sum(1).mean())


def anchor_fitness(anchors_px: np.ndarray, wh: np.ndarray, thr: float) -> float:
    """``mean(best * (best > 1 / thr))``, YOLOv5's anchor fitness; 0.0 when there are no labels."""
    wh = clean_wh(wh)
    if len(wh) == 0:
        return 0.0
    best = ratio_metric(anchors_px, wh).max(1)
    return float((best * (best > 1 / thr)).mean())


def describe_anchors(anchors_px: np.ndarray, wh: np.ndarray, thr: float, imgsz: int) -> list[str]:
    """YOLOv5's ``print_results`` lines for anchors (sorted by area) on label sizes."""
    k = np.asarray(anchors_px, dtype=np.float64).reshape(-1, 2)
    k = k[np.argsort(k.prod(1))]
    wh = clean_wh(wh)
    x = ratio_metric(k, wh) if len(wh) else np.zeros((0, len(k)))
    best = x.max(1) if len(wh) else np.zeros(0)
    t = 1 / thr
    past = x[x > t]

    def mean(a: np.ndarray) -> float:
        return float(a.mean()) if a.size else 0.0

    pairs = ", ".join(f"{round(w)},{round(h)}" for w, h in k)
    return [
        f"thr={t:.2f}: {mean(best > t):.4f} best possible recall, {mean(x > t) * len(k):.2f} anchors past thr",
        f"n={len(k)}, img_size={imgsz}, metric_all={mean(x):.3f}/{mean(best):.3f}-mean/best, "
        f"past_thr={mean(past):.3f}-mean: {pairs}",
    ]


def order_anchors_by_stride(anchors_px: np.ndarray, strides: Sequence[float]) -> tuple[np.ndarray, bool]:
    """YOLOv5's check_anchor_order on ``(nl, na, 2)`` pixel anchors: flip the layers if the mean anchor area
    does not grow in the same direction as the stride. Returns ``(anchors, flipped)``."""
    a = np.asarray(anchors_px, dtype=np.float64)
    s = np.asarray(strides, dtype=np.float64).reshape(-1)
    da = a[-1].prod(-1).mean() - a[0].prod(-1).mean()
    ds = s[-1] - s[0]
    if da != 0 and np.sign(da) != np.sign(ds):
        return a[::-1].copy(), True
    return a.copy(), False
