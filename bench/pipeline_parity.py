"""Data pipeline parity with YOLOv5 7.0 given the same random draws: mosaic + random_perspective, letterbox, HSV.

    PYTHONPATH=src bench/.venv-yolov5/bin/python bench/pipeline_parity.py [--samples 200] [--imgsz 160] [--data shapes]

Runs in YOLOv5's environment with our src/ on the path. Both sides get the same draws: YOLOv5's module-level
``random`` (and ``np.random.uniform`` for HSV) is replaced by a scripted stand-in, ours gets a generator stand-in that
returns the same numbers; so the images and labels must agree exactly on our YOLOv5 path
(``augment.one_pass=false augment.pixel_centres=false``). Prints, per stage, how many samples match to the bit
and the largest pixel and label differences. bench/data_stats.py compares the loaders by distribution instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


class Script:
    """Stands in for Python's ``random`` module: uniform(a, b) = a + (b - a) * u with scripted u; choices and
    shuffle return scripted indices and permutations."""

    def __init__(self, values: list) -> None:
        self.values = list(values)

    def _next(self):
        return self.values.pop(0)

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self._next()

    def random(self) -> float:
        return self._next()

    def choices(self, population, k: int) -> list[int]:
        return list(self._next())[:k]

    def shuffle(self, x: list) -> None:
        perm = self._next()
        x[:] = [x[i] for i in perm]


class ScriptedRng(Script):
    """The same for our code, which takes a numpy Generator."""

    def uniform(self, low: float, high: float, size: int | None = None):
        if size is None:
            return super().uniform(low, high)
        return np.array([super(ScriptedRng, self).uniform(low, high) for _ in range(size)])

    def integers(self, low: int, high: int, size: int) -> np.ndarray:
        return np.array(self._next())[:size]


def draws(rng: np.random.Generator, n: int) -> dict:
    return {
        "yc": rng.random(), "xc": rng.random(), "others": [int(i) for i in rng.integers(0, n, 3)],
        "perm": [int(i) for i in rng.permutation(4)], "warp": list(rng.random(8)), "hsv": list(rng.random(3)),
    }  # fmt: skip


def build(imgsz: int, hyp: dict, data_name: str = "shapes", cache: str | None = None):
    import yaml
    from accuracy import resolve_data
    from yolov5.utils.dataloaders import LoadImagesAndLabels

    from detector import CONF_DIR
    from detector.data.dataset import YoloDataset
    from detector.data.labels import load_labels

    data = yaml.safe_load(resolve_data(data_name).read_text())
    train = str(Path(data["path"]) / data["train"])
    common5 = dict(hyp=hyp, stride=32, cache_images=cache)
    y5 = LoadImagesAndLabels(train, imgsz, 16, augment=True, rect=False, pad=0.0, **common5)
    y5val = LoadImagesAndLabels(train, imgsz, 16, augment=False, rect=True, pad=0.5, **common5)
    aug = yaml.safe_load((Path(CONF_DIR) / "augment" / "default.yaml").read_text())
    aug |= {"one_pass": False, "pixel_centres": False, "albumentations": []}
    ls = load_labels(y5.im_files, None, nc=len(data["names"]), log_report=False)
    assert [str(f) for f in ls.im_files] == [str(f) for f in y5.im_files], "label loading kept other images"
    common = dict(imgsz=imgsz, rendering=aug, hyp=hyp, stride=32, seed=0, epochs=300, close_mosaic=0, cache=cache,
                  workers=0, threads=1)  # fmt: skip
    ours = YoloDataset(ls, batch_size=16, augment=True, rect=False, **common)
    ours_val = YoloDataset(ls, batch_size=16, augment=False, rect=True, pad=0.5, **common)
    return y5, y5val, ours, ours_val


def compare(name: str, pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> None:
    exact = sum(a.shape == b.shape and np.array_equal(a, b) for a, b, _, _ in pairs)
    px = max(
        float(np.abs(a.astype(int) - b.astype(int)).max()) if a.shape == b.shape else np.inf for a, b, _, _ in pairs
    )
    same_n = sum(len(la) == len(lb) for _, _, la, lb in pairs)
    lab = max((float(np.abs(la - lb).max()) if len(la) == len(lb) and len(la) else 0.0) for _, _, la, lb in pairs)
    print(f"{name:28s} images equal {exact}/{len(pairs)}, max pixel diff {px:.0f}; label counts equal "
          f"{same_n}/{len(pairs)}, max label diff {lab:.2e} px")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--data", default="shapes", help="as bench/accuracy.py's --data (its generated datasets too)")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--hyp", default="scratch-low", help="a YOLOv5 hyp name: scratch-low, scratch-med, ...")
    parser.add_argument("--set", nargs="*", default=[], help="hyp overrides, e.g. degrees=10 shear=2")
    parser.add_argument("--cache", choices=["ram", "disk"], help="image cache of both loaders (default: none)")
    args = parser.parse_args()
    import yaml
    import yolov5
    import yolov5.utils.augmentations as y5aug
    import yolov5.utils.dataloaders as y5dl

    from detector.data.photometric import augment_hsv, to_bgr
    from detector.data.rendering import render_mosaic

    hyp = yaml.safe_load((Path(yolov5.__file__).parent / "data" / "hyps" / f"hyp.{args.hyp}.yaml").read_text())
    hyp = (
        hyp
        | {"mosaic": 1.0, "mixup": 0.0, "copy_paste": 0.0}
        | {k: float(v) for k, v in (a.split("=") for a in args.set)}
    )
    y5, y5val, ours, ours_val = build(args.imgsz, hyp, args.data, args.cache)
    rng = np.random.default_rng(0)
    s = args.imgsz
    mosaics, hsv = [], []
    for _ in range(args.samples):
        index, d = int(rng.integers(ours.n)), draws(rng, ours.n)
        y5dl.random = y5aug.random = Script([d["yc"], d["xc"], d["others"], d["perm"], *d["warp"]])
        img5, lab5 = y5.load_mosaic(index)
        warp = ours.recipe.warp_for((2 * s, 2 * s), ScriptedRng(d["warp"]), border=(-s // 2, -s // 2))
        layout = ScriptedRng([d["xc"], d["yc"], d["others"], d["perm"]])
        img, lab = render_mosaic(ours.source, ours.recipe.rendering, index, s, layout, warp, 0.0)
        img = to_bgr(img)  # our canvas carries an alpha plane until the photometric step
        mosaics.append((img5, img, lab5, lab))
        a, b = img5.copy(), img.copy()
        saved, np.random.uniform = np.random.uniform, lambda lo, hi, n, u=d["hsv"]: lo + (hi - lo) * np.array(u)
        try:
            y5aug.augment_hsv(a, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
        finally:
            np.random.uniform = saved
        b = augment_hsv(b, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], ScriptedRng(d["hsv"]))
        hsv.append((a, b, lab5, lab))
    compare("mosaic + random_perspective", mosaics)
    compare("  then HSV", hsv)
    vals = []
    for index in range(0, ours.n, max(1, ours.n // args.samples)):
        img5, lab5, path, _ = y5val[index]
        img, lab, _, _ = ours_val[ours_val.im_files.index(path)]
        img5 = img5.numpy()
        lab5 = lab5.numpy()[:, 1:]
        vals.append((img5, img.numpy(), lab5, lab.numpy()[:, 1:]))
    compare("validation letterbox (rect)", vals)


if __name__ == "__main__":
    main()
