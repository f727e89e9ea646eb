"""Accuracy side by side: YOLOv5 7.0's train.py and ours on the same data, settings and seeds.

    bench/yolov5_env.sh            # once: YOLOv5 7.0 in bench/.venv-yolov5 (never a dependency of ours)
    .venv/bin/python bench/accuracy.py --data shapes --epochs 30 --imgsz 160
    .venv/bin/python bench/accuracy.py --data small-objects --epochs 30 --imgsz 320

Both train yolov5n from scratch with hyp scratch-low, SGD, batch 16, AutoAnchor on, our defaults otherwise
(``--optimizer AdamW --lr0 0.001``: both on AdamW, a budget at which the built-in data is learned on CPU;
``--hyp warmup_bias_lr=0`` and other hyp values go to both). Runs
alternate (YOLOv5 seed 0, ours seed 0, YOLOv5 seed 1, ...) so that drift of the machine hits both alike. Prints
per-epoch train/val losses (mean and min-max over the seeds) and final mAP@0.5 and mAP@0.5:0.95 per seed, with
mean and spread; writes everything to ``--out`` as JSON. Runs already finished under ``--out`` are reused, so
an interrupted call continues where it stopped. ``--data`` is ``shapes`` (the built-in dataset),
``small-objects`` (generated here: 480-800 px images with 2-10 objects of 8-48 px), ``large-images`` (640-960 px
images with 1-6 objects of 32 px up to a quarter of the short side), ``issue8`` (512 / 128 images of 240-480 px with
1-11 objects, the character of issue 8's measurement) or a YOLOv5 data yaml.
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


# Generated datasets of another character than the built-in one (128-256 px images, 1-4 objects of 14 px up to 60 % of
# the short side): render_sample's settings and the train/val image counts.
GENERATED = {
    # larger images with small objects: 8-48 px objects in 480-800 px images (2-15 px at imgsz 256)
    "small-objects": dict(long_side=(480, 800), max_objects=10, p_background=0.02, min_size=8, max_size_frac=0.08),
    # large textured JPEGs shrunk 4-6x at imgsz 160 (aliasing: linear resize in training, area in validation):
    # 1-6 objects of 32 px up to a quarter of the short side
    "large-images": dict(long_side=(640, 960), max_objects=6, p_background=0.02, min_size=32, max_size_frac=0.25),
    # the character of issue 8's own measurement: 512 train / 128 val JPEGs of 240-480 px, 6 classes, about 6 objects
    # an image (1-11), at imgsz 256
    "issue8": dict(
        long_side=(240, 480), max_objects=11, p_background=0.02, min_size=14, max_size_frac=0.3, n_train=512, n_val=128
    ),
}


def generated_dataset(root: Path, settings: dict) -> Path:
    """A dataset drawn by the built-in generator with other sizes (``GENERATED``: render_sample's settings, and
    ``n_train``/``n_val`` images, 384/96 unless given), as JPEGs; returns the yaml."""
    import cv2
    import yaml

    from detector.data.shapes import CLASSES, render_sample

    yaml_path = root / "data.yaml"
    if yaml_path.exists():
        return yaml_path
    settings = dict(settings)
    n_train, n_val = settings.pop("n_train", 384), settings.pop("n_val", 96)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([7, split_id, i])
            img, labels, _ = render_sample(rng, **settings)
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
    if name in GENERATED:
        return generated_dataset(DATASETS / name, GENERATED[name])
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


def hyp_overrides(args: argparse.Namespace) -> dict[str, float]:
    """The hyp values both trainers get on top of scratch-low: ``--lr0`` and every ``--hyp KEY=VALUE``."""
    values = {} if args.lr0 is None else {"lr0": args.lr0}
    for item in args.hyp:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--hyp takes KEY=VALUE, got {item!r}")
        values[key] = float(value)
    return values


def yolov5_hyp(overrides: dict[str, float], out: Path) -> Path:
    """YOLOv5's own hyp.scratch-low.yaml, or a copy of it in ``out`` with ``overrides`` (``hyp_overrides``) applied."""
    import yaml

    root = subprocess.check_output(
        [str(Y5_PY), "-c", "import yolov5, pathlib; print(pathlib.Path(yolov5.__file__).parent)"], text=True
    ).strip()
    hyp = Path(root) / "data" / "hyps" / "hyp.scratch-low.yaml"
    if not overrides:
        return hyp
    values = yaml.safe_load(hyp.read_text())
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        sys.exit(f"not keys of YOLOv5's hyp.scratch-low.yaml: {unknown}")
    copy = out / "hyp.scratch-low.bench.yaml"
    copy.write_text(yaml.safe_dump(values | overrides, sort_keys=False))
    return copy


def run_yolov5(data: Path, args: argparse.Namespace, seed: int, out: Path, ourdata: bool = False) -> Path:
    """YOLOv5 7.0's train.py; ``ourdata``: fed by our training loader (bench/yolov5_ourdata.py)."""
    name = f"{'yolov5-ourdata' if ourdata else 'yolov5'}-seed{seed}"
    entry = [str(ROOT / "bench" / "yolov5_ourdata.py")] if ourdata else ["-m", "yolov5.train"]
    env = yolov5_env(out)
    if ourdata:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    cmd = [
        str(Y5_PY), *entry, "--data", str(data), "--cfg", "yolov5n.yaml", "--weights", "",
        "--hyp", str(yolov5_hyp(hyp_overrides(args), out)), "--img", str(args.imgsz), "--batch-size", str(args.batch),
        "--epochs", str(args.epochs), "--workers", str(args.workers), "--seed", str(seed),
        "--optimizer", args.optimizer,
        "--project", str(out), "--name", name, "--exist-ok", "--noplots",
    ]  # fmt: skip
    if args.cache:
        cmd += ["--cache", args.cache]
    with open(out / f"{name}.log", "w") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=out)
    return out / name / "results.csv"


def run_ours(data: Path, args: argparse.Namespace, seed: int, out: Path, y5data: bool = False) -> Path:
    """Our train.py; ``y5data``: fed by YOLOv5's training loader (bench/detector_y5data.py)."""
    name = f"{'detector-y5data' if y5data else 'detector'}-seed{seed}"
    run_dir = out / name
    entry = [str(ROOT / "bench" / "detector_y5data.py")] if y5data else ["-m", "detector.train"]
    cmd = [
        str(OURS_PY), *entry, f"data={data}", "hyp=scratch-low", "model=yolov5n",
        f"imgsz={args.imgsz}", f"batch_size={args.batch}", f"epochs={args.epochs}", f"workers={args.workers}",
        f"seed={seed}", f"optimizer={args.optimizer}", "trainer=cpu", "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    cmd += [f"hyp.{key}={value}" for key, value in hyp_overrides(args).items()]
    if args.cache:
        cmd.append(f"cache={args.cache}")
    cmd += args.ours
    with open(out / f"{name}.log", "w") as log:
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
            sd = f"  sd {v.std(ddof=1):.4f}" if len(v) > 1 else ""
            lines.append(f"{t:8s} {m:22s} seeds {per_seed}  mean {v.mean():.4f}  spread {v.max() - v.min():.4f}{sd}")
    for t in trainers:
        if t != "yolov5" and "yolov5" in trainers:
            lines += verdict(runs["yolov5"], runs[t], n_epochs, t)
    return "\n".join(lines)


def last5(runs: dict[int, dict[str, list[float]]], col: str) -> np.ndarray:
    """Each run's mean of ``col`` over its last 5 epochs."""
    return np.array([np.mean(r[col][-5:]) for r in runs.values()])


def verdict(
    ref: dict[int, dict[str, list[float]]], ours: dict[int, dict[str, list[float]]], n_epochs: int, name: str
) -> list:
    """Issue 8's criteria: final mAP@0.5:0.95 mean and spread against YOLOv5's (with Welch's t, so that a gap can be
    told from seed noise) and the epochs from 5 on where our mean train box loss lies inside YOLOv5's seed range."""
    from scipy import stats

    m = "metrics/mAP_0.5:0.95"
    a, b = (np.array([r[m][-1] for r in runs.values()]) for runs in (ref, ours))
    lines = [f"\nissue 8 criteria ({name} against YOLOv5)"]
    ratio = b.mean() / a.mean() if a.mean() > 0 else float("nan")
    met = "met" if b.mean() >= a.mean() else "NOT met"
    lines.append(f"  mAP@0.5:0.95 mean {b.mean():.4f} vs {a.mean():.4f} ({ratio:.2f}x): {met}")
    wider = np.ptp(b) > np.ptp(a)
    lines.append(f"  spread {np.ptp(b):.4f} vs {np.ptp(a):.4f}: {'NOT met' if wider else 'met'}")
    if len(a) > 1 and len(b) > 1:
        t, p = stats.ttest_ind(b, a, equal_var=False)
        lines.append(f"  Welch t {t:.2f} (p {p:.2f}; |t| < 2 is within seed noise)")
        # The final epoch's mAP jumps between epochs when the EMA barely averages (few optimizer steps): the mean of
        # each run's last 5 epochs is a steadier figure of the same thing.
        a5, b5 = last5(ref, m), last5(ours, m)
        t5, p5 = stats.ttest_ind(b5, a5, equal_var=False)
        lines.append(
            f"  mean of the last 5 epochs: {b5.mean():.4f} (sd {b5.std(ddof=1):.4f}) vs {a5.mean():.4f} "
            f"(sd {a5.std(ddof=1):.4f}), {b5.mean() / a5.mean():.2f}x, Welch t {t5:.2f} (p {p5:.2f})"
        )
    v = "val/box_loss"
    if len(a) > 1 and len(b) > 1 and all(v in r for r in (*ref.values(), *ours.values())):
        av, bv = last5(ref, v), last5(ours, v)
        tv, pv = stats.ttest_ind(bv, av, equal_var=False)
        lines.append(f"  val box loss, mean of the last 5 epochs: {bv.mean():.5f} vs {av.mean():.5f}, "
                     f"{bv.mean() / av.mean():.3f}x, Welch t {tv:.2f} (p {pv:.2f})")  # fmt: skip
    c = "val/cls_loss"
    if len(a) > 1 and len(b) > 1 and all(c in r for r in (*ref.values(), *ours.values())):
        # Excursions: epochs of the second half whose val cls loss exceeds YOLOv5's typical final level by 5 %
        # (a run whose validation classes swing while its train loss stays flat; seen on large-images).
        level = 1.05 * float(np.median(last5(ref, c)))
        ae, be = (
            [int(np.sum(np.asarray(r[c][n_epochs // 2 :]) > level)) for r in runs.values()] for runs in (ref, ours)
        )
        u = stats.mannwhitneyu(be, ae) if any(ae) or any(be) else None
        lines.append(f"  val cls loss excursions (epochs {n_epochs // 2}+ above {level:.4f}): runs with any "
                     f"{sum(x > 0 for x in be)}/{len(be)} vs {sum(x > 0 for x in ae)}/{len(ae)}, epochs per run "
                     f"{np.mean(be):.2f} vs {np.mean(ae):.2f}"
                     + (f", Mann-Whitney p {u.pvalue:.3f}" if u is not None else ""))  # fmt: skip
    col = "train/box_loss"
    inside = []
    for e in range(5, n_epochs):
        ref_e = [r[col][e] for r in ref.values()]
        mean_e = float(np.mean([r[col][e] for r in ours.values()]))
        inside.append(min(ref_e) <= mean_e <= max(ref_e))
    lines.append(f"  train box loss mean inside YOLOv5's seed range: {sum(inside)} of {len(inside)} epochs from 5")
    return lines


def summarise_folder(args: argparse.Namespace) -> None:
    """Print the summary of the finished runs (``--epochs`` rows) of each of ``--trainers`` in ``--out``."""
    runs: dict[str, dict[int, dict[str, list[float]]]] = {t: {} for t in args.trainers}
    only = {}
    for spec in args.only:  # TRAINER:FIRST-LAST
        trainer, _, seeds = spec.partition(":")
        first, _, last = seeds.partition("-")
        only[trainer] = set(range(int(first), int(last or first) + 1))
    for trainer in args.trainers:
        for done in sorted(args.out.glob(f"{trainer}-seed*/results.csv")):
            seed = int(done.parent.name.rsplit("seed", 1)[1])
            if trainer in only and seed not in only[trainer]:
                continue
            got = read_results(done)
            if len(got.get("train/box_loss", [])) == args.epochs:
                runs[trainer][seed] = got
        runs[trainer] = dict(sorted(runs[trainer].items()))
        print(f"{trainer}: seeds {list(runs[trainer])}")
    print(summary(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--optimizer", default="SGD", choices=["SGD", "Adam", "AdamW"], help="both trainers")
    parser.add_argument("--lr0", type=float, default=None, help="hyp lr0 for both (default: scratch-low's)")
    parser.add_argument("--hyp", action="append", default=[], metavar="KEY=VALUE", help="a hyp value for both (repeat)")
    parser.add_argument("--cache", choices=["ram", "disk"], default=None, help="image cache for both (large JPEGs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--trainers",
        nargs="+",
        default=["yolov5", "detector"],
        choices=["yolov5", "detector", "yolov5-ourdata", "detector-y5data"],
        help="yolov5-ourdata: YOLOv5's train.py fed by our training loader (bench/yolov5_ourdata.py); "
        "detector-y5data: ours fed by YOLOv5's (bench/detector_y5data.py)",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for runs, logs and summary.json")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="train nothing: summarise every finished run of --trainers in --out, whatever its seed",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TRAINER:FIRST-LAST",
        help="with --summary-only: that trainer's seeds FIRST..LAST only (repeat for each trainer)",
    )
    parser.add_argument("ours", nargs="*", help="extra overrides for our trainer, e.g. augment.one_pass=true")
    args = parser.parse_args()
    if args.summary_only:
        sys.exit(summarise_folder(args))
    if {"yolov5", "yolov5-ourdata", "detector-y5data"} & set(args.trainers) and not Y5_PY.exists():
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
            else:  # an unfinished run's folder goes first: YOLOv5 appends to an existing results.csv
                shutil.rmtree(done.parent, ignore_errors=True)
                if trainer in ("detector", "detector-y5data"):
                    path = run_ours(data, args, seed, out, y5data=trainer == "detector-y5data")
                else:
                    path = run_yolov5(data, args, seed, out, ourdata=trainer == "yolov5-ourdata")
            times[trainer].append(time.perf_counter() - t0)
            runs[trainer][seed] = read_results(path)
            print(f"{trainer} seed {seed}: {times[trainer][-1]:.0f} s, final mAP@0.5:0.95 "
                  f"{runs[trainer][seed]['metrics/mAP_0.5:0.95'][-1]:.4f}", flush=True)  # fmt: skip
    text = summary(runs)
    print(f"data {data}, imgsz {args.imgsz}, batch {args.batch}, epochs {args.epochs}, seeds {args.seeds}, "
          f"optimizer {args.optimizer}, hyp scratch-low {hyp_overrides(args) or ''}")  # fmt: skip
    print(text)
    if "yolov5" in args.trainers:
        logs = [out / f"yolov5-seed{s}.log" for s in args.seeds]  # absent for runs linked in from another --out
        nms = [log.read_text().count("NMS time limit") if log.exists() else None for log in logs]
        print(f"\nYOLOv5 'NMS time limit' warnings per seed: {nms}")
    record = {"args": vars(args) | {"out": str(out)}, "runs": runs, "seconds": times, "summary": text}
    (out / "summary.json").write_text(json.dumps(record, default=str, indent=1))


if __name__ == "__main__":
    main()
