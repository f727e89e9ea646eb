"""What the model sees: statistics of training batches from YOLOv5 7.0's loader and ours, on the same images.

    bench/.venv-yolov5/bin/python bench/data_stats.py yolov5 --out /tmp/y5.json
    .venv/bin/python bench/data_stats.py detector --out /tmp/ours.json                        # our defaults
    .venv/bin/python bench/data_stats.py detector augment.one_pass=true --out /tmp/one.json   # any overrides
    .venv/bin/python bench/data_stats.py compare /tmp/y5.json /tmp/ours.json /tmp/one.json
    .venv/bin/python bench/data_stats.py compare /tmp/y5.json /tmp/ours.json --test   # + KS tests on the raw values

Random draws cannot be matched between the two loaders, so they are compared by distribution over many batches:
labels per image, box centre x/y and width/height/area/aspect after augmentation (pixels), the fraction of boxes the
candidate filter drops, pixel mean and spread, the grey-114 padding fraction, and sharpness (mean |Laplacian|, which
shows interpolation and anti-aliasing differences). Both loaders run in the main process (workers 0), so that the
box filter can be counted. ``--data`` is a name bench/accuracy.py knows (``shapes``, ``large-images``, ...) or a data
yaml. The raw values go beside the JSON (``.npz``); ``compare --test`` gives each value's two-sample
Kolmogorov-Smirnov p and the relative difference of the means with its 95 % interval, against the first file (box
values are not independent within an image, so their p-values run somewhat low).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUANTILES = (0.1, 0.5, 0.9)


class Stats:
    """Accumulates per-image and per-box values of (B, 3, H, W) uint8 RGB batches with (N, 6) normalised targets."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {k: [] for k in ("labels", "x", "y", "w", "h", "area", "aspect")}
        self.values |= {k: [] for k in ("mean_r", "mean_g", "mean_b", "std", "grey", "sharpness")}
        self.considered = self.kept = 0

    def add(self, imgs, targets) -> None:
        import cv2

        imgs, targets = imgs.numpy(), targets.numpy()
        h, w = imgs.shape[2:]
        for i, im in enumerate(imgs):
            t = targets[targets[:, 0] == i]
            self.values["labels"].append(len(t))
            bw, bh = t[:, 4] * w, t[:, 5] * h
            self.values["x"] += (t[:, 2] * w).tolist()
            self.values["y"] += (t[:, 3] * h).tolist()
            self.values["w"] += bw.tolist()
            self.values["h"] += bh.tolist()
            self.values["area"] += (bw * bh).tolist()
            self.values["aspect"] += np.maximum(bw / bh, bh / bw).tolist()
            hwc = np.ascontiguousarray(im.transpose(1, 2, 0))
            for c, name in enumerate(("mean_r", "mean_g", "mean_b")):
                self.values[name].append(float(hwc[..., c].mean()))
            self.values["std"].append(float(hwc.std()))
            self.values["grey"].append(float((hwc == 114).all(-1).mean()))
            grey = cv2.cvtColor(hwc, cv2.COLOR_RGB2GRAY).astype(np.float32)
            self.values["sharpness"].append(float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean()))

    def count(self, kept: np.ndarray) -> None:
        self.considered += int(kept.size)
        self.kept += int(kept.sum())

    def summary(self, name: str, images: int) -> dict:
        out = {"name": name, "images": images, "dropped": 1 - self.kept / max(self.considered, 1)}
        out["considered"] = self.considered
        for k, v in self.values.items():
            a = np.asarray(v, np.float64)
            out[k] = {"mean": float(a.mean()) if a.size else float("nan")}
            out[k] |= {f"q{int(q * 100)}": float(np.quantile(a, q)) if a.size else float("nan") for q in QUANTILES}
        return out


def counting(box_candidates, stats: Stats):
    """``box_candidates`` that also counts the boxes it sees and keeps."""

    def wrapped(*a, **k):
        kept = box_candidates(*a, **k)
        stats.count(np.asarray(kept))
        return kept

    return wrapped


def resolve_data(name: str) -> Path:
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "src")]
    from accuracy import resolve_data as resolve

    return resolve(name)


def run_yolov5(args: argparse.Namespace, stats: Stats) -> str:
    import os
    import tempfile

    sys.path.insert(0, str(ROOT / "bench"))
    from accuracy import yolov5_env

    os.environ.update(yolov5_env(Path(tempfile.mkdtemp())))  # offline settings and the fonts it would download
    import yaml
    from yolov5.utils import augmentations
    from yolov5.utils.dataloaders import create_dataloader
    from yolov5.utils.general import check_dataset, init_seeds

    augmentations.box_candidates = counting(augmentations.box_candidates, stats)
    hyp_file = Path(augmentations.__file__).parents[1] / "data" / "hyps" / f"hyp.{args.hyp}.yaml"
    hyp = yaml.safe_load(hyp_file.read_text())
    init_seeds(args.seed + 1, deterministic=True)
    data = check_dataset(str(resolve_data(args.data)))
    loader, _ = create_dataloader(data["train"], args.imgsz, args.batch, 32, hyp=hyp, augment=True, workers=0,
                                  shuffle=True, seed=args.seed, cache=args.cache)  # fmt: skip
    return _consume(loader, args, stats)


def run_detector(args: argparse.Namespace, stats: Stats) -> str:
    import tempfile

    sys.path.insert(0, str(ROOT))
    from detector.data import geometry
    from detector.data.config import load_data_config
    from detector.train import build_datamodule
    from tests.helpers import compose_train

    geometry.box_candidates = counting(geometry.box_candidates, stats)
    overrides = [f"hyp={args.hyp}", f"imgsz={args.imgsz}", f"batch_size={args.batch}", f"seed={args.seed}"]
    overrides.append(f"cache={args.cache or 'null'}")
    cfg = compose_train([*overrides, "workers=0", "run_dir=" + tempfile.mkdtemp(), *args.overrides])
    data = load_data_config(str(resolve_data(args.data)), cfg.datasets_dir, str(ROOT))
    dm = build_datamodule(cfg, data, stride=32)  # every yolov5 P5 model
    dm.setup("fit")
    return _consume(dm, args, stats)


def _consume(loader, args: argparse.Namespace, stats: Stats) -> str:
    images = epoch = 0
    while images < args.images:
        if hasattr(loader, "train_dataloader"):  # our DataModule: a fresh epoch each time
            dl = loader.train_dataloader()
            dl.sampler.set_epoch(epoch)
        else:
            dl = loader
        for batch in dl:
            stats.add(batch[0], batch[1])
            images += batch[0].shape[0]
            if images >= args.images:
                break
        epoch += 1
    return f"{images}"


def compare(paths: list[Path]) -> None:
    runs = [json.loads(p.read_text()) for p in paths]
    print(f"{'':22s}" + "".join(f"{r['name']:>30s}" for r in runs))
    print(f"{'images':22s}" + "".join(f"{r['images']:>30d}" for r in runs))
    print(f"{'boxes dropped':22s}" + "".join(f"{r['dropped']:>30.4f}" for r in runs))
    for key in runs[0]:
        if not isinstance(runs[0][key], dict):
            continue
        cells = [f"{r[key]['mean']:.3f} ({r[key]['q10']:.2f}/{r[key]['q50']:.2f}/{r[key]['q90']:.2f})" for r in runs]
        print(f"{key + ' mean (q10/50/90)':22s}" + "".join(f"{c:>30s}" for c in cells))


def test(paths: list[Path]) -> None:
    """Each run's raw values against the first run's: KS p, and (mean - first mean) / first mean with 95 % interval."""
    from scipy.stats import ks_2samp

    raws = [np.load(p.with_suffix(".npz")) for p in paths]
    runs = [json.loads(p.read_text()) for p in paths]
    for path, raw, run in zip(paths[1:], raws[1:], runs[1:], strict=True):
        print(f"\n{path.stem} against {paths[0].stem}: KS p, mean difference (95 % interval)")
        (p0, n0), (p1, n1) = ((r["dropped"], r.get("considered", 0)) for r in (runs[0], run))
        if n0 and n1:
            half = 1.96 * np.sqrt(p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1)
            print(f"  {'dropped':10s} n {n0:>7d} / {n1:>7d}   {p0:.4f} / {p1:.4f}: {p1 - p0:+.4f} (±{half:.4f})")
        for key in raws[0].files:
            a, b = raws[0][key].astype(np.float64), raw[key].astype(np.float64)
            p = ks_2samp(a, b).pvalue
            diff = (b.mean() - a.mean()) / a.mean()
            half = 1.96 * np.sqrt(a.var() / a.size + b.var() / b.size) / abs(a.mean())
            print(f"  {key:10s} n {a.size:>7d} / {b.size:>7d}   KS p {p:.3f}   {diff:+.2%} (±{half:.2%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("impl", choices=["yolov5", "detector", "compare"])
    parser.add_argument("overrides", nargs="*", help="detector: config overrides; compare: the JSON files")
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--hyp", default="scratch-low")
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=1600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", choices=["ram", "disk"], help="image cache of the loader (large JPEGs)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--test", action="store_true", help="compare: KS tests and mean differences on the raw values")
    args = parser.parse_args()
    if args.impl == "compare":
        compare([Path(p) for p in args.overrides])
        if args.test:
            test([Path(p) for p in args.overrides])
        return
    stats = Stats()
    images = int((run_yolov5 if args.impl == "yolov5" else run_detector)(args, stats))
    name = args.impl + ("" if not args.overrides else " " + " ".join(args.overrides))
    result = stats.summary(name, images)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
        raw = {k: np.asarray(v, np.float32) for k, v in stats.values.items()}
        np.savez_compressed(args.out.with_suffix(".npz"), **raw)
    print(text if not args.out else f"wrote {args.out} and its .npz")


if __name__ == "__main__":
    main()
