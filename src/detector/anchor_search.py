"""AutoAnchor's search: k-means on the label sizes, then YOLOv5's genetic refinement.

The search keeps YOLOv5's mutation and greedy acceptance, but each generation scores a batch of mutations at once
(several independent hill climbers, each trying a few mutations, instead of one climber trying one), in log space,
on every label binned on a log-size grid (one weighted point per occupied bin, ~3,000 for 100,000 labels); k-means
runs on a random subsample. The result is re-scored exactly on every label and is never worse than the k-means
start. Pixels, ``(w, h)``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.cluster.vq import kmeans

from detector.anchors import clean_wh, describe_anchors

logger = logging.getLogger(__name__)

_GA_BLOCK = 4096  # labels per block in the population fitness, keeps its buffers in cache


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


def bin_label_sizes(wh: np.ndarray, log_step: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Label sizes ``(N, 2)`` grouped on a grid of ``log_step`` in ``(log w, log h)``: ``(sizes, counts)``, one
    row per occupied cell, at the geometric mean of its labels. ``None`` or 0: every label its own row.

    A label moves by at most ``log_step`` in log size (8 % at 0.08), so fitness changes by about 1e-3 of itself;
    the search only ranks candidates on it, the result is scored exactly.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    if not log_step or len(wh) == 0:
        return wh, np.ones(len(wh))
    lw = np.log(wh.clip(min=1e-6))
    cell = np.floor(lw / log_step).astype(np.int64)
    cell -= cell.min(0)
    key = cell[:, 0] * (int(cell[:, 1].max()) + 1) + cell[:, 1]  # one integer per cell: a 1-D unique is ~10x faster
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    mean = np.zeros((len(counts), 2))
    np.add.at(mean, inverse, lw)
    return np.exp(mean / counts[:, None]), counts.astype(np.float64)


def population_fitness(
    cands: np.ndarray, log_wh: np.ndarray, thr: float, weights: np.ndarray | None = None
) -> np.ndarray:
    """Fitness ``(P,)`` of anchor sets ``(P, n, 2)`` (pixels) on label sizes given as logs ``(2, N)`` float32,
    each label counted ``weights`` times (None: once).

    In log space ``x = exp(-max(|dlog w|, |dlog h|))``, so ``best > 1/thr`` is ``min distance < log thr``:
    the same metric as ``ratio_metric`` with no divisions, and a running minimum over anchors keeps the work
    in a cache-sized ``(P, block)`` buffer (single-threaded numpy, ~3 ns per label/anchor pair).
    """
    lk = np.log(np.asarray(cands, dtype=np.float64)).astype(np.float32)
    log_thr = np.float32(math.log(thr))
    n_pop, n_anchor, _ = lk.shape
    w = np.ones(log_wh.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    total = np.zeros(n_pop, np.float64)
    for i in range(0, log_wh.shape[1], _GA_BLOCK):
        lw, lh = log_wh[0, i : i + _GA_BLOCK], log_wh[1, i : i + _GA_BLOCK]
        dmin = np.full((n_pop, len(lw)), np.inf, np.float32)
        a, b = np.empty_like(dmin), np.empty_like(dmin)
        for j in range(n_anchor):
            np.abs(np.subtract(lw, lk[:, j, 0:1], out=a), out=a)
            np.abs(np.subtract(lh, lk[:, j, 1:2], out=b), out=b)
            np.minimum(dmin, np.maximum(a, b, out=a), out=dmin)
        total += (np.exp(-dmin) * (dmin < log_thr)).astype(np.float64) @ w[i : i + _GA_BLOCK]
    return total / max(w.sum(), 1e-12)


def evolve_anchors(
    k: np.ndarray,
    wh: np.ndarray,
    thr: float,
    gen: int,
    rng: np.random.Generator,
    *,
    weights: np.ndarray | None = None,
    population: int = 16,
    climbers: int = 4,
    mutation_prob: float = 0.9,
    sigma: float = 0.1,
    clip_factors: tuple[float, float] = (0.3, 3.0),
    min_anchor: float = 2.0,
) -> tuple[np.ndarray, float]:
    """Genetic refinement as ``climbers`` independent greedy hill climbers started from ``k``; each generation
    every climber scores ``population // climbers`` YOLOv5 mutations of its anchors (all scored in one batch)
    and keeps the best if it beats its fitness. Returns the best climber's ``(anchors, fitness on wh)``, each
    label counted ``weights`` times (None: once).

    One mutation is ``v = ((U < mutation_prob) * u * N(0, 1) * sigma + 1).clip(*clip_factors)`` per element,
    ``u`` one uniform per candidate, redrawn while every factor is 1; candidate ``(k * v).clip(min_anchor)``.
    ``population=1, climbers=1`` is YOLOv5's (1 + 1) hill climb; several climbers escape its local optima.
    """
    log_wh = np.log(np.asarray(wh, dtype=np.float64).clip(min=1e-6).T).astype(np.float32)  # a 0 side scores 0
    k = np.asarray(k, dtype=np.float64).clip(min=min_anchor)
    n_climb = max(1, min(climbers, population))
    n_cand = max(1, population // n_climb)
    ks = np.repeat(k[None], n_climb, 0)
    f = np.repeat(population_fitness(k[None], log_wh, thr, weights), n_climb)
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
        fg = population_fitness(cand.reshape(-1, *k.shape), log_wh, thr, weights).reshape(shape[:2])
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
    kmeans_boxes: int | None = 4096,
    kmeans_iter: int = 10,
    bin_step: float | None = 0.08,
    mutation_prob: float = 0.9,
    sigma: float = 0.1,
    clip_factors: tuple[float, float] = (0.3, 3.0),
    min_anchor: float = 2.0,
    min_label: float = 2.0,
    verbose: bool = True,
) -> np.ndarray:
    """Anchors ``(n, 2)`` float32 in pixels, sorted by area, fitted to label sizes ``wh0`` (pixels at imgsz).

    Labels with both sides under ``min_label`` px are ignored. k-means (whitened, ``kmeans_iter`` restarts, on at
    most ``kmeans_boxes`` random labels; None: all) starts the search; with fewer distinct labels than anchors, or
    if k-means fails, ``spread_init`` does. ``evolve_anchors`` then refines for ``gen`` generations (``population``
    mutations per generation shared by ``climbers`` hill climbers) on all labels binned by ``bin_label_sizes``
    (``bin_step`` in log size; None: unbinned). The result is the better of start and evolved anchors, scored
    exactly on all labels. Never raises on degenerate data.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    wh0 = clean_wh(wh0)
    if len(wh0) == 0:
        logger.warning("AutoAnchor: no labels to fit anchors to; using a default spread of %d anchors", n)
        return default_anchor_spread(n, imgsz)
    wh = _usable_sizes(wh0, min_label, min_anchor)
    sample = wh
    if kmeans_boxes is not None and len(wh) > kmeans_boxes:
        sample = wh[rng.choice(len(wh), kmeans_boxes, replace=False)]
    k0 = _start_anchors(sample, n, thr, kmeans_iter, min_anchor, rng)
    sizes, counts = bin_label_sizes(wh, bin_step)
    search = dict(population=population, climbers=climbers, mutation_prob=mutation_prob, sigma=sigma)
    k, _ = evolve_anchors(k0, sizes, thr, gen, rng, weights=counts, clip_factors=clip_factors,
                          min_anchor=min_anchor, **search)  # fmt: skip
    log_wh = np.log(wh.clip(min=1e-6).T).astype(np.float32)
    exact = population_fitness(np.stack([k0, k]), log_wh, thr)  # anchor_fitness on every label, faster
    if exact[0] > exact[1]:
        k = k0  # the binned sizes favoured a set that is worse on the labels themselves
    k = k[np.argsort(k.prod(1), kind="stable")].astype(np.float32)
    if not np.isfinite(k).all():  # cannot happen with finite inputs; belt and braces against NaN anchors
        logger.warning("AutoAnchor: non-finite anchors computed; using a default spread")
        return default_anchor_spread(n, imgsz)
    if verbose:
        for line in describe_anchors(k, wh, thr, imgsz):
            logger.info("AutoAnchor: %s", line)
    return k


def _usable_sizes(wh0: np.ndarray, min_label: float, min_anchor: float) -> np.ndarray:
    """Label sizes with a side of at least ``min_label`` px (all, clipped, when none has), as float32 values."""
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
    return wh.astype(np.float32).astype(np.float64)


def _start_anchors(
    fit: np.ndarray, n: int, thr: float, kmeans_iter: int, min_anchor: float, rng: np.random.Generator
) -> np.ndarray:
    """k-means start of the search, or a spread of the label sizes when k-means cannot give ``n`` anchors."""
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
    return k0.clip(min=min_anchor)
