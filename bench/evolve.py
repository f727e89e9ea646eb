"""Evolution throughput side by side: children per hour and per-child overhead, ours against YOLOv5 7.0's --evolve.

    bench/yolov5_env.sh            # once: YOLOv5 7.0 in bench/.venv-yolov5 (never a dependency of ours)
    .venv/bin/python bench/evolve.py --data shapes --imgsz 160 --children 3 --epochs 1 3

Both evolve yolov5n from scratch (hyp scratch-low, SGD, batch 16) at population 1, YOLOv5's sequence, on the same
data: YOLOv5 in one process (``train.py --evolve N``), ours one process per child (``-m hydra/sweeper=evolve``).
Each runs ``--children`` children at two lengths E1 < E2 (``--epochs``), alternated. With t(E) the wall time per
child, t(E) = overhead + E * epoch time, so the overhead (what does not grow with the epochs: process start, data,
model, AutoAnchor, the final validation) is (E2 t(E1) - E1 t(E2)) / (E2 - E1). Children per hour are quoted at E2.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from accuracy import OURS_PY, ROOT, Y5_PY, resolve_data, yolov5_env, yolov5_hyp


def run_yolov5(data: Path, args: argparse.Namespace, epochs: int, out: Path) -> float:
    name = f"yolov5-e{epochs}"
    shutil.rmtree(out / name, ignore_errors=True)
    cmd = [
        str(Y5_PY), "-m", "yolov5.train", "--evolve", str(args.children), "--data", str(data), "--cfg", "yolov5n.yaml",
        "--weights", "", "--hyp", str(yolov5_hyp(argparse.Namespace(lr0=None), out)), "--img", str(args.imgsz),
        "--batch-size", str(args.batch), "--epochs", str(epochs), "--workers", str(args.workers), "--device", "cpu",
        "--project", str(out), "--name", name, "--exist-ok",
    ]  # fmt: skip
    return timed(cmd, out / f"{name}.log", yolov5_env(out), out)


def run_ours(data: Path, args: argparse.Namespace, epochs: int, out: Path) -> float:
    sweep = out / f"detector-e{epochs}"
    shutil.rmtree(sweep, ignore_errors=True)
    cmd = [
        str(OURS_PY), "-m", "detector.train", "-m", "hydra/sweeper=evolve",
        f"hydra.sweeper.generations={args.children}", f"hydra.sweeper.sweep_dir={sweep}", "hydra.sweeper.seed=0",
        f"data={data}", "hyp=scratch-low",
        "model=yolov5n", f"imgsz={args.imgsz}", f"batch_size={args.batch}", f"epochs={epochs}",
        f"workers={args.workers}", "trainer=cpu", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    return timed(cmd, out / f"detector-e{epochs}.log", None, ROOT)


def timed(cmd: list[str], log_path: Path, env: dict[str, str] | None, cwd: Path) -> float:
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=cwd)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="shapes", help="shapes, small-objects (bench/accuracy.py) or a data yaml")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--children", type=int, default=3, help="children per trainer and length")
    ap.add_argument("--epochs", type=int, nargs=2, default=[1, 3], help="the two child lengths E1 < E2")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-evolve")
    args = ap.parse_args()
    if not Y5_PY.exists():
        sys.exit("YOLOv5 7.0 is not installed: run bench/yolov5_env.sh first")
    e1, e2 = args.epochs
    if not 0 < e1 < e2:
        sys.exit("--epochs needs two lengths 0 < E1 < E2")
    data = resolve_data(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    per_child: dict[str, dict[int, float]] = {"yolov5": {}, "detector": {}}
    for epochs in (e1, e2):
        for name, run in (("yolov5", run_yolov5), ("detector", run_ours)):
            per_child[name][epochs] = run(data, args, epochs, args.out) / args.children
            print(f"{name:8s} {epochs} epochs: {per_child[name][epochs]:.1f} s per child", flush=True)
    print(f"\ndata {data}, imgsz {args.imgsz}, batch {args.batch}, workers {args.workers}, "
          f"{args.children} children per run, population 1")  # fmt: skip
    print(f"{'':9s} {'t(E1) s':>9s} {'t(E2) s':>9s} {'overhead s':>11s} {'epoch s':>8s} {'children/h @E2':>15s}")
    rate = {}
    for name, t in per_child.items():
        overhead = (e2 * t[e1] - e1 * t[e2]) / (e2 - e1)
        epoch = (t[e2] - t[e1]) / (e2 - e1)
        rate[name] = 3600 / t[e2]
        print(f"{name:9s} {t[e1]:9.1f} {t[e2]:9.1f} {overhead:11.1f} {epoch:8.1f} {rate[name]:15.1f}")
    print(f"\nchildren per hour, ours / YOLOv5's: {rate['detector'] / rate['yolov5']:.2f}x")


if __name__ == "__main__":
    main()
