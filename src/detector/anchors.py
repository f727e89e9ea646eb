"""AutoAnchor maths: label sizes, the anchor/label ratio metric, k-means + genetic anchor search, the check.

Pure numpy/scipy, no Lightning. All anchors and box sizes here are in pixels, ``(w, h)``.

Metric (YOLOv5): for a label ``wh`` and an anchor ``k``, ``x = min over sides of min(wh / k, k / wh)``
in (0, 1]; ``best = max over anchors of x``; a label is covered when ``best > 1 / thr``.
``bpr`` = fraction of labels covered, ``aat`` = mean number of anchors per label with ``x > 1 / thr``,
fitness = ``mean(best * (best > 1 / thr))``.

The anchor search keeps YOLOv5's mutation and greedy acceptance, but each generation scores a batch of
mutations at once (several independent hill climbers, each trying a few mutations, instead of one climber
trying one), on a random subsample of the labels, in log space; the result is re-scored on every label and
is never worse than the k-means start.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.vq import kmeans

logger = logging.getLogger(__name__)

_METRIC_CHUNK = 65536  # labels scored per block by the exact metric, bounds memory to ~10 MB per block
_GA_BLOCK = 4096  # labels per block in the population fitness, keeps its buffers in cache


def label_wh(
    labels: Sequence[np.ndarray],
    shapes: np.ndarray,
    imgsz: int,
    rng: np.random.Generator | None = None,
    scale_jitter: tuple[float, float] = (0.9, 1.1),
    warn: bool = True,
) -> np.ndarray:
    """Label sizes in pixels, ``(N, 2)`` float32, for images resized so that their long side is ``imgsz``.

    ``labels``: one ``(n, 5)`` ``[cls, x, y, w, h]`` normalised array per image; ``shapes``: ``(n_img, 2)``
    as (w, h).
    With ``rng``, each image is also scaled by one ``U(*scale_jitter)`` draw (YOLOv5's check_anchors).
    Rows with non-finite or negative sizes and images with a non-positive shape, are dropped (logged if warn).
    """
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    if len(labels) != len(shapes):
        raise ValueError(f"label_wh: {len(labels)} label arrays but {len(shapes)} image shapes")
    if len(shapes) == 0:
        return np.zeros((0, 2), np.float32)
    long_side = shapes.max(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = shapes * (imgsz / long_side)  # (w, h) of each resized image
    if rng is not None:
        scale = scale * rng.uniform(scale_jitter[0], scale_jitter[1], size=(len(shapes), 1))
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


def _clean_wh(wh: np.ndarray) -> np.ndarray:
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
    wh = _clean_wh(wh)
    if len(wh) == 0:
        return 0.0, 0.0
    x = ratio_metric(anchors_px, wh)
    best = x.max(1)
    return float((best > 1 / thr).mean()), float((x > 1 / thr).sum(1).mean())


def anchor_fitness(anchors_px: np.ndarray, wh: np.ndarray, thr: float) -> float:
    """``mean(best * (best > 1 / thr))``, YOLOv5's anchor fitness; 0.0 when there are no labels."""
    wh = _clean_wh(wh)
    if len(wh) == 0:
        return 0.0
    best = ratio_metric(anchors_px, wh).max(1)
    return float((best * (best > 1 / thr)).mean())


def describe_anchors(anchors_px: np.ndarray, wh: np.ndarray, thr: float, imgsz: int) -> list[str]:
    """YOLOv5's ``print_results`` lines for anchors (sorted by area) on label sizes."""
    k = np.asarray(anchors_px, dtype=np.float64).reshape(-1, 2)
    k = k[np.argsort(k.prod(1))]
    wh = _clean_wh(wh)
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


def default_anchor_spread(n: int, imgsz: int) -> np.ndarray:
    """``n`` square anchors, sides geometric from ``imgsz / 64`` to ``imgsz / 2`` (a start with no data)."""
    sides = np.geomspace(max(imgsz / 64, 2.0), max(imgsz / 2, 2.0), n) if n > 1 else np.array([imgsz / 8])
    return np.stack([sides, sides], 1).astype(np.float32)


def spread_init(wh: np.ndarray, n: int, thr: float, min_anchor: float = 2.0) -> np.ndarray:
    """``n`` anchors from the distinct label sizes at evenly spaced area quantiles; repeats spread in size.

    Used instead of k-means when there are fewer distinct labels than anchors or k-means fails. Every label
    picked stays covered: copies of one box are scaled by factors within ``[thr^-0.25, thr^0.25]``.
    """
    wh = np.unique(np.asarray(wh, dtype=np.float64), axis=0)  # distinct sizes: rare extremes get anchors too
    order = np.argsort(wh.prod(1), kind="stable")
    picks = wh[order[((np.arange(n) + 0.5) / n * len(wh)).astype(int).clip(0, len(wh) - 1)]].astype(np.float64)
    out = picks.copy()
    _, inverse, counts = np.unique(picks, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    for g in np.flatnonzero(counts > 1):
        idx = np.flatnonzero(inverse == g)
        out[idx] = picks[idx] * (thr ** np.linspace(-0.25, 0.25, len(idx)))[:, None]
    return out.clip(min=min_anchor)


def _kmeans_init(wh: np.ndarray, n: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Whitened scipy k-means with ``iters`` restarts; raises if it does not return ``n`` finite centroids."""
    s = wh.std(0)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)  # all-equal widths would give s = 0 and NaN (YOLOv5 #4528)
    k = kmeans(wh / s, n, iter=iters, rng=rng)[0] * s
    if len(k) != n or not np.isfinite(k).all():
        raise ValueError(f"kmeans requested {n} points but returned {len(k)}")
    return k


def population_fitness(cands: np.ndarray, log_wh: np.ndarray, thr: float) -> np.ndarray:
    """Fitness ``(P,)`` of anchor sets ``(P, n, 2)`` (pixels) on label sizes given as logs ``(2, N)`` float32.

    In log space ``x = exp(-max(|dlog w|, |dlog h|))``, so ``best > 1/thr`` is ``min distance < log thr``:
    the same metric as ``ratio_metric`` with no divisions, and a running minimum over anchors keeps the work
    in a cache-sized ``(P, block)`` buffer (single-threaded numpy, ~3 ns per label/anchor pair).
    """
    lk = np.log(np.asarray(cands, dtype=np.float64)).astype(np.float32)
    log_thr = np.float32(math.log(thr))
    n_pop, n_anchor, _ = lk.shape
    total = np.zeros(n_pop, np.float64)
    for i in range(0, log_wh.shape[1], _GA_BLOCK):
        lw, lh = log_wh[0, i : i + _GA_BLOCK], log_wh[1, i : i + _GA_BLOCK]
        dmin = np.full((n_pop, len(lw)), np.inf, np.float32)
        a, b = np.empty_like(dmin), np.empty_like(dmin)
        for j in range(n_anchor):
            np.abs(np.subtract(lw, lk[:, j, 0:1], out=a), out=a)
            np.abs(np.subtract(lh, lk[:, j, 1:2], out=b), out=b)
            np.minimum(dmin, np.maximum(a, b, out=a), out=dmin)
        total += (np.exp(-dmin) * (dmin < log_thr)).sum(1, dtype=np.float64)
    return total / max(1, log_wh.shape[1])


def evolve_anchors(
    k: np.ndarray,
    wh: np.ndarray,
    thr: float,
    gen: int,
    rng: np.random.Generator,
    population: int = 16,
    climbers: int = 4,
    mutation_prob: float = 0.9,
    sigma: float = 0.1,
    clip_factors: tuple[float, float] = (0.3, 3.0),
    min_anchor: float = 2.0,
) -> tuple[np.ndarray, float]:
    """Genetic refinement as ``climbers`` independent greedy hill climbers started from ``k``; each generation
    every climber scores ``population // climbers`` YOLOv5 mutations of its anchors (all scored in one batch)
    and keeps the best if it beats its fitness. Returns the best climber's ``(anchors, fitness on wh)``.

    One mutation is ``v = ((U < mutation_prob) * u * N(0, 1) * sigma + 1).clip(*clip_factors)`` per element,
    ``u`` one uniform per candidate, redrawn while every factor is 1; candidate ``(k * v).clip(min_anchor)``.
    ``population=1, climbers=1`` is YOLOv5's (1 + 1) hill climb; several climbers escape its local optima.
    """
    log_wh = np.log(np.asarray(wh, dtype=np.float64).clip(min=1e-6).T).astype(np.float32)  # a 0 side scores 0
    k = np.asarray(k, dtype=np.float64).clip(min=min_anchor)
    n_climb = max(1, min(climbers, population))
    n_cand = max(1, population // n_climb)
    ks = np.repeat(k[None], n_climb, 0)
    f = np.repeat(population_fitness(k[None], log_wh, thr), n_climb)
    shape = (n_climb, n_cand, *k.shape)
    rows = np.arange(n_climb)
    for _ in range(gen):
        v = np.ones(shape)
        todo = np.ones(shape[:2], bool)
        while todo.any():  # redraw candidates whose factors are all exactly 1 (no change)
            m = int(todo.sum())
            mask = rng.random((m, *k.shape)) < mutation_prob
            u = rng.random((m, 1, 1))
            v[todo] = (mask * u * rng.standard_normal((m, *k.shape)) * sigma + 1).clip(*clip_factors)
            todo = (v == 1).all((2, 3))
        cand = (ks[:, None] * v).clip(min=min_anchor)
        fg = population_fitness(cand.reshape(-1, *k.shape), log_wh, thr).reshape(shape[:2])
        i = fg.argmax(1)
        better = fg[rows, i] > f
        ks[better], f[better] = cand[rows, i][better], fg[rows, i][better]
    best = int(f.argmax())
    return ks[best], float(f[best])


def kmean_anchors(
    wh0: np.ndarray,
    n: int = 9,
    imgsz: int = 640,
    thr: float = 4.0,
    gen: int = 1000,
    rng: np.random.Generator | None = None,
    *,
    population: int = 16,
    climbers: int = 4,
    max_fit_boxes: int | None = 8192,
    kmeans_iter: int = 30,
    mutation_prob: float = 0.9,
    sigma: float = 0.1,
    clip_factors: tuple[float, float] = (0.3, 3.0),
    min_anchor: float = 2.0,
    min_label: float = 2.0,
    verbose: bool = True,
) -> np.ndarray:
    """Anchors ``(n, 2)`` float32 in pixels, sorted by area, fitted to label sizes ``wh0`` (pixels at imgsz).

    Labels with both sides under ``min_label`` px are ignored. k-means (whitened, ``kmeans_iter`` restarts)
    starts the search; with fewer distinct labels than anchors, or if k-means fails, ``spread_init`` does.
    ``evolve_anchors`` then refines for ``gen`` generations (``population`` mutations per generation shared by
    ``climbers`` hill climbers). Both run on at most ``max_fit_boxes`` random labels (None: all).
    The result is the better of start and evolved anchors on all labels. Never raises on degenerate data.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    wh0 = _clean_wh(wh0)
    if len(wh0) == 0:
        logger.warning("AutoAnchor: no labels to fit anchors to; using a default spread of %d anchors", n)
        return default_anchor_spread(n, imgsz)
    small = int((wh0 < 3.0).any(1).sum())
    if small:
        logger.warning(
            "AutoAnchor: Extremely small objects found: %d of %d labels are <3 pixels in size",
            small,
            len(wh0),
        )
    wh = wh0[(wh0 >= min_label).any(1)]
    if len(wh) == 0:
        logger.warning(
            "AutoAnchor: all %d labels are under %.1f px; fitting anchors to them clipped at %.1f px",
            len(wh0),
            min_label,
            min_anchor,
        )
        wh = wh0.clip(min=min_anchor)
    wh = wh.astype(np.float32).astype(np.float64)
    fit = wh
    if max_fit_boxes is not None and len(wh) > max_fit_boxes:
        fit = wh[rng.choice(len(wh), max_fit_boxes, replace=False)]
    n_distinct = len(np.unique(fit, axis=0))
    if n_distinct < n:
        logger.warning(
            "AutoAnchor: only %d distinct label sizes for %d anchors; skipping k-means and spreading "
            "anchors around the label sizes",
            n_distinct,
            n,
        )
        k0 = spread_init(fit, n, thr, min_anchor)
    else:
        try:
            k0 = _kmeans_init(fit, n, kmeans_iter, rng)
        except Exception as e:  # scipy drops empty clusters on duplicated data (YOLOv5 #3482)
            logger.warning("AutoAnchor: %s; switching from k-means to a spread of the label sizes", e)
            k0 = spread_init(fit, n, thr, min_anchor)
    k0 = k0.clip(min=min_anchor)
    k, _ = evolve_anchors(k0, fit, thr, gen, rng, population, climbers, mutation_prob, sigma, clip_factors, min_anchor)
    if anchor_fitness(k0, wh, thr) > anchor_fitness(k, wh, thr):
        k = k0  # the subsample favoured a set that is worse on all labels
    k = k[np.argsort(k.prod(1), kind="stable")].astype(np.float32)
    if not np.isfinite(k).all():  # cannot happen with finite inputs; belt and braces against NaN anchors
        logger.warning("AutoAnchor: non-finite anchors computed; using a default spread")
        return default_anchor_spread(n, imgsz)
    if verbose:
        for line in describe_anchors(k, wh, thr, imgsz):
            logger.info("AutoAnchor: %s", line)
    return k


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
    wh = _clean_wh(wh)
    valid = bool(np.isfinite(a).all() and (a > 0).all())
    if len(wh) == 0:
        res = AnchorCheck(0.0, 0.0, messages=["no labels in the training set"], warn=True)
        if valid:
            res.messages.append("keeping the current anchors ⚠️")
        else:
            spread = default_anchor_spread(nl * na, imgsz).reshape(nl, na, 2)
            res.anchors = order_anchors_by_stride(spread, strides)[0].astype(np.float32)
            res.messages.append("current anchors are invalid, using a default spread ⚠️")
        return res
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
    if force or not valid or res.new_bpr > bpr:
        grid, flipped = order_anchors_by_stride(new.reshape(nl, na, 2), strides)
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
    res.warn = (res.new_bpr if res.replaced else bpr) <= bpr_target
    return res
