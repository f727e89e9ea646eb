"""Benchmark: our anchor search against YOLOv5 7.0's own ``kmean_anchors``, on the same boxes, in one run.

    bench/yolov5_env.sh            # once: YOLOv5 7.0 in bench/.venv-yolov5 (never a dependency of ours)
    .venv/bin/python bench/autoanchor.py [--boxes 100000] [--gen 1000] [--skip-yolov5]

YOLOv5's function runs in its own environment (a child process of this script, ``--yolov5-child``), on a stand-in
dataset with its ``.shapes`` and ``.labels`` built from the same seed, with numpy's global seed set; it is timed
inside the child, so the child's imports are not counted. Both results are scored on all boxes with
``detector.anchors.anchor_fitness``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from detector.anchor_search import kmean_anchors
from detector.anchors import anchor_fitness, anchor_metrics, label_wh

ROOT = Path(__file__).resolve().parents[1]
Y5_PY = ROOT / "bench" / ".venv-yolov5" / "bin" / "python"


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


def yolov5_child(args: argparse.Namespace) -> None:
    """In YOLOv5's environment: its kmean_anchors on the same labels; prints seconds and anchors as JSON."""
    from yolov5.utils.autoanchor import kmean_anchors as yolov5_kmean_anchors

    labels, sizes_wh = make_dataset(args.boxes, args.seed)
    dataset = SimpleNamespace(shapes=sizes_wh.astype(np.float64), labels=labels)
    np.random.seed(args.seed)
    t0 = time.perf_counter()
    anchors = yolov5_kmean_anchors(dataset, args.n, args.imgsz, args.thr, args.gen, verbose=False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "anchors": np.asarray(anchors).tolist()}))


def run_yolov5(args: argparse.Namespace) -> tuple[float, np.ndarray]:
    cmd = [str(Y5_PY), str(Path(__file__).resolve()), "--yolov5-child", "--boxes", str(args.boxes), "--gen",
           str(args.gen), "--n", str(args.n), "--imgsz", str(args.imgsz), "--thr", str(args.thr), "--seed",
           str(args.seed)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg", "YOLO_OFFLINE": "1",
           "ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS": "1", "YOLOv5_AUTOINSTALL": "false"}  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    result = json.loads(out)
    return result["seconds"], np.asarray(result["anchors"], np.float32)


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
    ap.add_argument("--kmeans-boxes", type=int, default=4096)
    ap.add_argument("--kmeans-iter", type=int, default=10)
    ap.add_argument("--bin-step", type=float, default=0.08, help="0: no binning")
    ap.add_argument("--skip-yolov5", action="store_true")
    ap.add_argument("--yolov5-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.yolov5_child:
        return yolov5_child(args)

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
        kmeans_boxes=args.kmeans_boxes,
        kmeans_iter=args.kmeans_iter,
        bin_step=args.bin_step or None,
        verbose=False,
    )
    t_ours = time.perf_counter() - t0
    bpr, aat = anchor_metrics(ours, wh_f, args.thr)
    print(
        f"ours   : {t_ours:7.2f} s  fitness {anchor_fitness(ours, wh_f, args.thr):.5f}  BPR {bpr:.4f}  "
        f"aat {aat:.2f}  (population {args.population}, {args.climbers} climbers, "
        f"k-means on {args.kmeans_boxes} boxes x {args.kmeans_iter}, bin step {args.bin_step})"
    )
    print("         anchors " + ", ".join(f"{w:.0f},{h:.0f}" for w, h in ours))
    if args.skip_yolov5:
        return
    t_ref, ref = run_yolov5(args)
    bpr, aat = anchor_metrics(ref, wh_f, args.thr)
    print(f"YOLOv5 : {t_ref:7.2f} s  fitness {anchor_fitness(ref, wh_f, args.thr):.5f}  BPR {bpr:.4f}  aat {aat:.2f}")
    print("         anchors " + ", ".join(f"{w:.0f},{h:.0f}" for w, h in ref))
    print(f"speed-up: {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
