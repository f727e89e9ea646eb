"""YOLOv5's check_anchors: score the current anchors, search new ones when they fit poorly, keep the better."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from detector.anchor_search import default_anchor_spread, kmean_anchors
from detector.anchors import anchor_metrics, clean_wh, order_anchors_by_stride


@dataclass
class AnchorCheck:
    """Outcome of ``check_anchors``: metrics before/after, new ``(nl, na, 2)`` pixel anchors if replaced."""

    old_bpr: float
    old_aat: float
    new_bpr: float | None = None
    new_aat: float | None = None
    anchors: np.ndarray | None = None
    messages: list[str] = field(default_factory=list)
    warn: bool = False  # no labels, or the anchors kept/taken still have BPR <= bpr_target

    @property
    def replaced(self) -> bool:
        return self.anchors is not None

    def summary(self) -> str:
        return " ".join(self.messages)


def check_anchors(
    wh: np.ndarray,
    anchors_px: np.ndarray,
    strides: Sequence[float],
    thr: float = 4.0,
    imgsz: int = 640,
    *,
    wh_fit: np.ndarray | None = None,
    force: bool = False,
    bpr_target: float = 0.98,
    gen: int = 1000,
    rng: np.random.Generator | None = None,
    **search_kwargs,
) -> AnchorCheck:
    """YOLOv5's check_anchors on label sizes ``wh`` (pixels, usually scale-jittered) and current anchors.

    New anchors are searched (``kmean_anchors`` on ``wh_fit``, default ``wh``) when BPR <= ``bpr_target``,
    when ``force`` is set (hyp['anchors'] placeholders) or when current anchors are not positive and finite;
    they replace the current ones only if their BPR is higher, or always when forced/invalid. They are sorted
    by area, shaped ``(nl, na, 2)`` and ordered like ``strides``. ``search_kwargs`` go to ``kmean_anchors``.
    """
    a = np.asarray(anchors_px, dtype=np.float64)
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"check_anchors: anchors must be (nl, na, 2), got {tuple(a.shape)}")
    if len(np.asarray(strides).reshape(-1)) != a.shape[0]:
        raise ValueError(f"check_anchors: {len(np.asarray(strides).reshape(-1))} strides for {a.shape[0]} layers")
    nl, na = a.shape[:2]
    wh = clean_wh(wh)
    valid = bool(np.isfinite(a).all() and (a > 0).all())
    if len(wh) == 0:
        return _no_labels(valid, nl, na, strides, imgsz)
    bpr, aat = anchor_metrics(a.reshape(-1, 2), wh, thr)
    res = AnchorCheck(bpr, aat, messages=[f"{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR)."])
    if valid and not force and bpr > bpr_target:
        res.messages.append("Current anchors are a good fit to dataset ✅")
        return res
    if not valid:
        res.messages.append("Current anchors are not positive and finite (placeholders?), computing new ones...")
    elif force:
        res.messages.append("Computing new anchors (forced: hyp['anchors'] placeholders)...")
    else:
        res.messages.append("Anchors are a poor fit to dataset ⚠️, attempting to improve...")
    new = kmean_anchors(wh if wh_fit is None else wh_fit, nl * na, imgsz, thr, gen, rng, verbose=False, **search_kwargs)
    res.new_bpr, res.new_aat = anchor_metrics(new, wh, thr)
    _decide(res, new.reshape(nl, na, 2), strides, take=force or not valid or res.new_bpr > bpr)
    res.warn = (res.new_bpr if res.replaced else bpr) <= bpr_target
    return res


def _no_labels(valid: bool, nl: int, na: int, strides: Sequence[float], imgsz: int) -> AnchorCheck:
    res = AnchorCheck(0.0, 0.0, messages=["no labels in the training set"], warn=True)
    if valid:
        res.messages.append("keeping the current anchors ⚠️")
    else:
        spread = default_anchor_spread(nl * na, imgsz).reshape(nl, na, 2)
        res.anchors = order_anchors_by_stride(spread, strides)[0].astype(np.float32)
        res.messages.append("current anchors are invalid, using a default spread ⚠️")
    return res


def _decide(res: AnchorCheck, new: np.ndarray, strides: Sequence[float], take: bool) -> None:
    """Take the ``(nl, na, 2)`` anchors ``new`` (ordered like the strides) into ``res`` when ``take``; say so."""
    bpr = res.old_bpr
    if take:
        grid, flipped = order_anchors_by_stride(new, strides)
        res.anchors = grid.astype(np.float32)
        res.messages.append(
            f"New anchors: {res.new_aat:.2f} anchors/target, BPR {bpr:.3f} → {res.new_bpr:.3f}"
            + (" (reversed anchor order)" if flipped else "")
            + ". Done ✅ (optional: update model *.yaml to use these anchors in the future)"
        )
    else:
        res.messages.append(
            f"New anchors BPR {res.new_bpr:.3f} ≤ {bpr:.3f}: original anchors better than new "
            "anchors, proceeding with original anchors"
        )
