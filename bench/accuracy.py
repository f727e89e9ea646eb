"""Accuracy side by side: YOLOv5 7.0's train.py and ours on the same data, settings and seeds.

    bench/yolov5_env.sh            # once: YOLOv5 7.0 in bench/.venv-yolov5 (never a dependency of ours)
    .venv/bin/python bench/accuracy.py --data shapes --epochs 30 --imgsz 160
    .venv/bin/python bench/accuracy.py --data small-objects --epochs 30 --imgsz 320

Both train yolov5n from scratch with hyp scratch-low, SGD, batch 16, AutoAnchor on, our defaults otherwise
(``--optimizer AdamW --lr0 0.001``: both on AdamW, a budget at which the built-in data is learned on CPU). Runs
alternate (YOLOv5 seed 0, ours seed 0, YOLOv5 seed 1, ...) so that drift of the machine hits both alike. Prints
per-epoch train/val losses (mean and min-max over the seeds) and final mAP@0.5 and mAP@0.5:0.95 per seed, with
mean and spread; writes everything to ``--out`` as JSON. Runs already finished under ``--out`` are reused, so
an interrupted call continues where it stopped. ``--data`` is ``shapes`` (the built-in dataset),
``small-objects`` (generated here: 480-800 px images with 2-10 objects of 8-48 px) or a YOLOv5 data yaml.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
Y5_PY = ROOT / "bench" / ".venv-yolov5" / "bin" / "python"
OURS_PY = ROOT / ".venv" / "bin" / "python"
DATASETS = Path(os.environ.get("DETECTOR_DATASETS", "~/.cache/detector/datasets")).expanduser()
COLUMNS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "val/box_loss", "val/obj_loss", "val/cls_loss")
METRICS = ("metrics/mAP_0.5", "metrics/mAP_0.5:0.95")


def small_objects_dataset(root: Path, n_train: int = 384, n_val: int = 96) -> Path:
    """Larger images with small objects, drawn by the built-in generator with other sizes; returns the yaml."""
    import cv2
    import yaml

    from detector.data.shapes import CLASSES, render_sample

    yaml_path = root / "data.yaml"
    if yaml_path.exists():
        return yaml_path
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([7, split_id, i])
            img, labels, _ = render_sample(
                rng, long_side=(480, 800), max_objects=10, p_background=0.02, min_size=8, max_size_frac=0.08
            )
            cv2.imwrite(str(tmp / "images" / split / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
            rows = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels]
            (tmp / "labels" / split / f"{i:05d}.txt").write_text("".join(rows))
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": list(CLASSES)}
    (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return yaml_path


def resolve_data(name: str) -> Path:
    if name == "shapes":
        from detector.data.shapes import ensure_shapes_dataset

        return ensure_shapes_dataset(DATASETS / "shapes")
    if name == "small-objects":
        return small_objects_dataset(DATASETS / "small-objects")
    return Path(name).resolve()


def yolov5_env(work: Path) -> dict[str, str]:
    fonts = work / "yolov5-config"
    fonts.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copy("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", fonts / name)
    return {
        **os.environ,
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS": "1",
        "YOLOv5_AUTOINSTALL": "false",
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "false",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "YOLOV5_CONFIG_DIR": str(fonts),
    }


def yolov5_hyp(args: argparse.Namespace, out: Path) -> Path:
    """YOLOv5's own hyp.scratch-low.yaml, or a copy of it in ``out`` with ``--lr0`` applied."""
    import yaml

    root = subprocess.check_output(
        [str(Y5_PY), "-c", "import yolov5, pathlib; print(pathlib.Path(yolov5.__file__).parent)"], text=True
    ).strip()
    hyp = Path(root) / "data" / "hyps" / "hyp.scratch-low.yaml"
    if args.lr0 is None:
        return hyp
    values = yaml.safe_load(hyp.read_text()) | {"lr0": args.lr0}
    copy = out / f"hyp.scratch-low.lr0-{args.lr0}.yaml"
    copy.write_text(yaml.safe_dump(values, sort_keys=False))
    return copy


def run_yolov5(data: Path, args: argparse.Namespace, seed: int, out: Path) -> Path:
    cmd = [
        str(Y5_PY), "-m", "yolov5.train", "--data", str(data), "--cfg", "yolov5n.yaml", "--weights", "",
        "--hyp", str(yolov5_hyp(args, out)), "--img", str(args.imgsz), "--batch-size", str(args.batch),
        "--epochs", str(args.epochs), "--workers", str(args.workers), "--seed", str(seed),
        "--optimizer", args.optimizer,
        "--project", str(out), "--name", f"yolov5-seed{seed}", "--exist-ok", "--noplots",
    ]  # fmt: skip
    with open(out / f"yolov5-seed{seed}.log", "w") as log:
        subprocess.run(cmd, env=yolov5_env(out), stdout=log, stderr=subprocess.STDOUT, check=True, cwd=out)
    return out / f"yolov5-seed{seed}" / "results.csv"


def run_ours(data: Path, args: argparse.Namespace, seed: int, out: Path) -> Path:
    run_dir = out / f"detector-seed{seed}"
    cmd = [
        str(OURS_PY), "-m", "detector.train", f"data={data}", "hyp=scratch-low", "model=yolov5n",
        f"imgsz={args.imgsz}", f"batch_size={args.batch}", f"epochs={args.epochs}", f"workers={args.workers}",
        f"seed={seed}", f"optimizer={args.optimizer}", "trainer=cpu", "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    if args.lr0 is not None:
        cmd.append(f"hyp.lr0={args.lr0}")
    if args.optimizer != "SGD":
        cmd.append("schedule.ramp_adam_beta1=false")  # YOLOv5 ramps SGD momentum only
    cmd += args.ours
    with open(out / f"detector-seed{seed}.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    return run_dir / "results.csv"


def read_results(path: Path) -> dict[str, list[float]]:
    """results.csv (ours or YOLOv5's, whose headers are space-padded) as column -> per-epoch values."""
    with open(path) as f:
        rows = [{k.strip(): float(v) for k, v in row.items() if k and v and v.strip()} for row in csv.DictReader(f)]
    return {k: [r[k] for r in rows] for k in (*COLUMNS, *METRICS) if rows and k in rows[0]}


def summary(runs: dict[str, dict[int, dict[str, list[float]]]]) -> str:
    lines = []
    trainers = list(runs)
    n_epochs = min(len(r["train/box_loss"]) for t in trainers for r in runs[t].values())
    for col in ("train/box_loss", "train/obj_loss", "val/box_loss"):
        lines.append(f"\n{col} per epoch, mean [min, max] over seeds")
        lines.append("epoch  " + "  ".join(f"{t:>28s}" for t in trainers))
        for e in range(n_epochs):
            cells = []
            for t in trainers:
                v = np.array([r[col][e] for r in runs[t].values()])
                cells.append(f"{v.mean():.4f} [{v.min():.4f}, {v.max():.4f}]".rjust(28))
            lines.append(f"{e:5d}  " + "  ".join(cells))
    lines.append("\nfinal epoch")
    for t in trainers:
        for m in METRICS:
            v = np.array([r[m][-1] for r in runs[t].values()])
            per_seed = " ".join(f"{x:.4f}" for x in v)
            lines.append(f"{t:8s} {m:22s} seeds {per_seed}  mean {v.mean():.4f}  spread {v.max() - v.min():.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--optimizer", default="SGD", choices=["SGD", "Adam", "AdamW"], help="both trainers")
    parser.add_argument("--lr0", type=float, default=None, help="hyp lr0 for both (default: scratch-low's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trainers", nargs="+", default=["yolov5", "detector"], choices=["yolov5", "detector"])
    parser.add_argument("--out", type=Path, default=None, help="folder for runs, logs and summary.json")
    parser.add_argument("ours", nargs="*", help="extra overrides for our trainer, e.g. augment.one_pass=true")
    args = parser.parse_args()
    if "yolov5" in args.trainers and not Y5_PY.exists():
        sys.exit("YOLOv5 7.0 is not installed: run bench/yolov5_env.sh first")
    data = resolve_data(args.data)
    out = args.out or ROOT / "outputs" / "bench-accuracy" / f"{Path(args.data).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, dict[str, list[float]]]] = {t: {} for t in args.trainers}
    times: dict[str, list[float]] = {t: [] for t in args.trainers}
    for seed in args.seeds:
        for trainer in args.trainers:
            done = out / f"{trainer}-seed{seed}" / "results.csv"
            t0 = time.perf_counter()
            if done.exists() and len(read_results(done).get("train/box_loss", [])) == args.epochs:
                path = done  # finished in an earlier, interrupted call with the same --out: reused, time 0
            else:
                path = (run_yolov5 if trainer == "yolov5" else run_ours)(data, args, seed, out)
            times[trainer].append(time.perf_counter() - t0)
            runs[trainer][seed] = read_results(path)
            print(f"{trainer} seed {seed}: {times[trainer][-1]:.0f} s, final mAP@0.5:0.95 "
                  f"{runs[trainer][seed]['metrics/mAP_0.5:0.95'][-1]:.4f}", flush=True)  # fmt: skip
    text = summary(runs)
    print(f"data {data}, imgsz {args.imgsz}, batch {args.batch}, epochs {args.epochs}, seeds {args.seeds}, "
          f"optimizer {args.optimizer}, lr0 {args.lr0 or 'scratch-low'}")  # fmt: skip
    print(text)
    if "yolov5" in args.trainers:
        nms = [(out / f"yolov5-seed{s}.log").read_text().count("NMS time limit") for s in args.seeds]
        print(f"\nYOLOv5 'NMS time limit' warnings per seed: {nms}")
    record = {"args": vars(args) | {"out": str(out)}, "runs": runs, "seconds": times, "summary": text}
    (out / "summary.json").write_text(json.dumps(record, default=str, indent=1))


if __name__ == "__main__":
    main()
