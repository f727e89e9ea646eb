"""Benchmark: our anchor search vs a faithful re-implementation of YOLOv5's kmean_anchors, on the same boxes.

Run: .venv/bin/python bench/autoanchor.py [--boxes 100000] [--gen 1000] [--threads N] [--skip-yolov5]

The YOLOv5 baseline below is written from the reference notes §5 (k-means on all boxes, 1000
generations of one mutated candidate each, scored over all boxes with the division-based metric in torch); it
exists only to be timed here. Both results are scored on all boxes with ``detector.anchors.anchor_fitness``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.cluster.vq import kmeans

from detector.anchor_search import kmean_anchors
from detector.anchors import anchor_fitness, anchor_metrics, label_wh


def make_dataset(n_boxes: int, seed: int = 0, per_image: int = 5) -> tuple[list[np.ndarray], np.ndarray]:
    """A realistic mix: images of common shapes, boxes with log-normal sizes from 3 object scales and
    log-normal aspect ratios (normalised ``[cls, x, y, w, h]`` labels and ``(w, h)`` image sizes)."""
    rng = np.random.default_rng(seed)
    n_img = n_boxes // per_image
    sizes_wh = np.array([[640, 480], [1280, 720], [480, 640], [1024, 1024], [1920, 1080]])[rng.integers(0, 5, n_img)]
    scale = rng.choice([0.02, 0.08, 0.25], size=(n_img, per_image), p=[0.5, 0.35, 0.15])
    area = scale * rng.lognormal(0.0, 0.5, (n_img, per_image))
    aspect = rng.lognormal(0.0, 0.6, (n_img, per_image))
    w = np.clip(area * np.sqrt(aspect), 1e-3, 1.0)
    h = np.clip(area / np.sqrt(aspect), 1e-3, 1.0)
    cls = rng.integers(0, 10, (n_img, per_image))
    labels = [
        np.stack([cls[i], np.full(per_image, 0.5), np.full(per_image, 0.5), w[i], h[i]], 1).astype(np.float32)
        for i in range(n_img)
    ]
    return labels, sizes_wh


def yolov5_kmean_anchors(wh0: np.ndarray, n: int, thr: float, gen: int, rng: np.random.Generator) -> np.ndarray:
    """YOLOv5's algorithm as described: filter, whitened k-means, greedy (1+1) mutation over all boxes."""
    t = 1 / thr
    wh = wh0[(wh0 >= 2.0).any(1)].astype(np.float32)
    s = wh.std(0)
    k = kmeans(wh / s, n, iter=30, rng=rng)[0] * s
    wh_t = torch.tensor(wh)

    def fitness(anchors: np.ndarray) -> float:
        r = wh_t[:, None] / torch.tensor(anchors, dtype=torch.float32)[None]
        best = torch.min(r, 1 / r).min(2)[0].max(1)[0]
        return float((best * (best > t).float()).mean())

    f, shape, mp, sigma = fitness(k), k.shape, 0.9, 0.1
    for _ in range(gen):
        v = np.ones(shape)
        while (v == 1).all():
            v = ((rng.random(shape) < mp) * rng.random() * rng.standard_normal(shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg
    return k[np.argsort(k.prod(1))].astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, default=100_000)
    ap.add_argument("--gen", type=int, default=1000)
    ap.add_argument("--n", type=int, default=9)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--thr", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--climbers", type=int, default=4)
    ap.add_argument("--max-fit-boxes", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the YOLOv5 baseline")
    ap.add_argument("--skip-yolov5", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    labels, sizes_wh = make_dataset(args.boxes, args.seed)
    wh = label_wh(labels, sizes_wh, args.imgsz)
    wh_f = wh[(wh >= 2.0).any(1)]
    print(
        f"boxes: {len(wh)} ({len(wh_f)} with a side >= 2 px), n={args.n}, imgsz={args.imgsz}, "
        f"thr={args.thr}, gen={args.gen}, torch threads={torch.get_num_threads()}"
    )

    t0 = time.perf_counter()
    ours = kmean_anchors(
        wh,
        args.n,
        args.imgsz,
        args.thr,
        args.gen,
        np.random.default_rng(args.seed),
        population=args.population,
        climbers=args.climbers,
        max_fit_boxes=args.max_fit_boxes,
        verbose=False,
    )
    t_ours = time.perf_counter() - t0
    bpr, aat = anchor_metrics(ours, wh_f, args.thr)
    print(
        f"ours   : {t_ours:7.2f} s  fitness {anchor_fitness(ours, wh_f, args.thr):.5f}  BPR {bpr:.4f}  "
        f"aat {aat:.2f}  (population {args.population}, {args.climbers} climbers, "
        f"fit on {args.max_fit_boxes} boxes)"
    )
    print("         anchors " + ", ".join(f"{w:.0f},{h:.0f}" for w, h in ours))
    if args.skip_yolov5:
        return
    t0 = time.perf_counter()
    ref = yolov5_kmean_anchors(wh, args.n, args.thr, args.gen, np.random.default_rng(args.seed))
    t_ref = time.perf_counter() - t0
    bpr, aat = anchor_metrics(ref, wh_f, args.thr)
    print(f"yolov5 : {t_ref:7.2f} s  fitness {anchor_fitness(ref, wh_f, args.thr):.5f}  BPR {bpr:.4f}  aat {aat:.2f}")
    print("         anchors " + ", ".join(f"{w:.0f},{h:.0f}" for w, h in ref))
    print(f"speed-up: {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
