"""The built-in `shapes` dataset: coloured geometric shapes on textured backgrounds, in YOLOv5 layout.

Generated once per (version, sizes, seed), deterministically, into a temporary sibling folder that is then
renamed into place, so an interrupted run never leaves half a dataset and concurrent callers agree.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import yaml

from detector.boxes import xyxy2xywhn

log = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
VERSION = 2  # bump when the generator's output changes
STAMP_FILE = ".shapes_stamp.json"
SPLITS = ("train", "val")


def ensure_shapes_dataset(
    root: str | Path, n_train: int = 400, n_val: int = 100, seed: int = 0, workers: int = 1
) -> Path:
    """Generate the shapes dataset under `root` unless an identical one is there; return its data yaml."""
    root = Path(root).expanduser().absolute()
    stamp = {"version": VERSION, "n_train": n_train, "n_val": n_val, "seed": seed, "classes": list(CLASSES)}
    if _is_current(root, stamp):
        return _write_yaml(root, root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _lock(root.parent / f".{root.name}.lock") as locked:
        if _is_current(root, stamp):  # another process built it while we waited
            return _write_yaml(root, root)
        if root.exists() and not (root / STAMP_FILE).is_file():
            raise FileExistsError(
                f"{root} exists but is not a generated shapes dataset (no {STAMP_FILE}); "
                "move it away or set datasets_dir to another folder"
            )
        if locked:  # nobody else is generating: leftovers of killed runs can go
            for stale in root.parent.glob(f".{root.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            log.info("generating the shapes dataset in %s (%d train, %d val images)", root, n_train, n_val)
            for split, n in zip(SPLITS, (n_train, n_val), strict=True):
                _generate_split(tmp, split, n, seed, workers)
            _write_yaml(tmp, root)
            (tmp / STAMP_FILE).write_text(json.dumps(stamp))
            _move_into_place(tmp, root, stamp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root / "data.yaml"


def _is_current(root: Path, stamp: dict) -> bool:
    try:
        return (root / "data.yaml").is_file() and json.loads((root / STAMP_FILE).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _write_yaml(folder: Path, root: Path) -> Path:
    """Write folder/data.yaml with `path: root` (rewritten if the dataset was moved)."""
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": list(CLASSES)}
    text = yaml.safe_dump(data, sort_keys=False)
    target = folder / "data.yaml"
    if not target.is_file() or target.read_text() != text:
        tmp = target.with_name(f".data.yaml.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    return target


def _move_into_place(tmp: Path, root: Path, stamp: dict) -> None:
    old = None
    if root.exists():  # an older generated version: set it aside, then delete it
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        if not _is_current(root, stamp):  # lost a race with a process without the lock: fine if it matches
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """Exclusive inter-process lock (POSIX); yields False where locking is unavailable."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _generate_split(folder: Path, split: str, n: int, seed: int, workers: int) -> None:
    (folder / "images" / split).mkdir(parents=True)
    (folder / "labels" / split).mkdir(parents=True)
    split_id = SPLITS.index(split)

    def write(i: int) -> None:
        rng = np.random.default_rng([seed, split_id, i])
        img, labels, _ = render_sample(rng)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok, "JPEG encoding failed"
        stem = f"{split}_{i:05d}"
        (folder / "images" / split / f"{stem}.jpg").write_bytes(buf.tobytes())
        rows = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
        (folder / "labels" / split / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))

    if workers <= 1:
        for i in range(n):
            write(i)
    else:
        with ThreadPool(workers) as pool:  # only JPEG encoding/IO overlap: measured no gain on 2 cores
            pool.map(write, range(n), chunksize=8)


def render_sample(
    rng: np.random.Generator,
    long_side: tuple[int, int] = (128, 256),
    max_objects: int = 4,
    p_background: float = 0.05,
    min_size: float = 14.0,
    max_size_frac: float = 0.6,
    max_occlusion: float = 0.25,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One BGR uint8 image, its labels (n, 5) [cls, x, y, w, h] normalised, and its owner map.

    The owner map (h, w) int16 holds the index of the object each pixel shows (-1 = background).

    Each box is the tight bound of the pixels its object shows in the image (the owner map).
    """
    long = int(rng.integers(long_side[0], long_side[1] + 1))
    short = int(round(long * rng.uniform(0.5, 1.0)))
    h, w = (long, short) if rng.random() < 0.5 else (short, long)
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int16)
    areas: list[int] = []  # drawn pixels per object
    visible: list[int] = []  # pixels still showing
    classes: list[int] = []
    crops: list[tuple[slice, slice]] = []
    n = 0 if rng.random() < p_background else int(rng.integers(1, max_objects + 1))
    max_size = max(min_size + 1, max_size_frac * min(h, w))
    for _ in range(n):
        for _attempt in range(20):
            cls = int(rng.integers(len(CLASSES)))
            size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
            mask, crop = _shape_mask(rng, cls, size, h, w)
            area = int(mask.sum())
            if area < 12:
                continue
            under = owner[crop][mask]
            hit = np.bincount(under[under >= 0], minlength=len(areas))
            if any(visible[j] - hit[j] < (1 - max_occlusion) * areas[j] for j in range(len(areas))):
                continue
            region = img[crop]
            region[mask] = _contrasting_colour(rng, region[mask].mean(0))
            owner[crop][mask] = len(areas)
            visible = [v - int(k) for v, k in zip(visible, hit, strict=True)] + [area]
            areas.append(area)
            classes.append(cls)
            crops.append(crop)
            break
    _clutter(rng, img, owner)
    amp = np.float32(rng.uniform(0, 14))  # uniform pixel noise: 3x cheaper than gaussian, looks the same
    img += (rng.random(img.shape, dtype=np.float32) - np.float32(0.5)) * (2 * amp)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, _tight_labels(owner, classes, crops), owner


def _tight_labels(owner: np.ndarray, classes: list[int], crops: list[tuple[slice, slice]]) -> np.ndarray:
    """(n, 5) [cls, x, y, w, h] normalised: the bound of the pixels each object still shows (hidden ones dropped)."""
    h, w = owner.shape
    rows = []
    for j, (cls, (sy, sx)) in enumerate(zip(classes, crops, strict=True)):
        ys, xs = np.nonzero(owner[sy, sx] == j)
        if len(xs) == 0:
            continue
        xyxy = np.array([xs.min() + sx.start, ys.min() + sy.start, xs.max() + 1 + sx.start, ys.max() + 1 + sy.start])
        rows.append([cls, *xyxy2xywhn(xyxy.astype(np.float64), w, h)])
    return np.array(rows, np.float32) if rows else np.zeros((0, 5), np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float32 BGR background: gradient or colour blotches, optionally stripes, with grain."""
    if rng.random() < 0.5:  # linear gradient between two colours
        a, b = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        t = np.deg2rad(rng.uniform(0, 360))
        p = _ramp(h, w, t)
        p = (p - p.min()) / max(float(p.max() - p.min()), 1.0)
        img = a + (b - a) * p[..., None]  # float32
    else:  # low-frequency colour blotches
        g = int(rng.integers(2, 9))
        small = rng.uniform(0, 255, (g, g, 3)).astype(np.float32)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.2:  # stripes
        t = np.deg2rad(rng.uniform(0, 180))
        period = rng.uniform(4, 40)
        s = (np.sin(_ramp(h, w, t) * np.float32(2 * np.pi / period)) > 0).astype(np.float32)[..., None]
        img = img * (1 - 0.4 * s) + 0.4 * s * rng.uniform(0, 255, 3).astype(np.float32)
    if rng.random() < 0.5:  # coarse grain
        grain = cv2.resize(rng.normal(0, 25, (h // 4 + 1, w // 4 + 1, 3)).astype(np.float32), (w, h))
        img = img + grain
    return np.clip(img, 0, 255, out=img)


def _ramp(h: int, w: int, angle: float) -> np.ndarray:
    """(h, w) float32 distance along the direction `angle` (radians)."""
    return np.arange(w, dtype=np.float32)[None] * np.float32(np.cos(angle)) + np.arange(h, dtype=np.float32)[
        :, None
    ] * np.float32(np.sin(angle))


def _shape_mask(
    rng: np.random.Generator, cls: int, size: float, h: int, w: int
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """One shape of class `cls` (longest side about `size` px) placed inside an (h, w) image.

    Returns its boolean mask over a crop of the image and that crop as (rows, cols) slices.
    """
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    sx, sy = (size / 2, size / 2 / aspect) if aspect >= 1 else (size / 2 * aspect, size / 2)
    angle = rng.uniform(-25, 25)
    name = CLASSES[cls]
    if name in ("circle", "ring"):
        k = 64
        t = np.linspace(0, 2 * np.pi, k, endpoint=False)
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        polys = [outer]
        if name == "ring":
            polys.append(outer * rng.uniform(0.45, 0.7))
        angle = rng.uniform(0, 180)
    elif name == "square":
        polys = [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)]
    elif name == "triangle":
        tri = np.array([[0, -1], [1, 1], [-1, 1]], np.float64) + rng.uniform(-0.2, 0.2, (3, 2))
        polys = [tri]
    elif name == "star":
        k = 5
        r = np.where(np.arange(2 * k) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        t = np.pi * np.arange(2 * k) / k - np.pi / 2
        polys = [np.stack([r * np.cos(t), r * np.sin(t)], 1)]
    else:  # cross
        a = rng.uniform(0.22, 0.38)
        q = [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ]
        polys = [np.array(q, np.float64)]
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    rot = np.array([[c, -s], [s, c]])
    polys = [(p * [sx, sy]) @ rot.T for p in polys]
    lo, hi = polys[0].min(0), polys[0].max(0)
    span = np.maximum(np.array([w - 1, h - 1]) - (hi - lo), 0)
    offset = -lo + rng.uniform(0, 1, 2) * span
    x0, y0 = (lo + offset).astype(int)
    x1, y1 = np.minimum(np.ceil(hi + offset).astype(int) + 1, [w, h])
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = [np.round((p + offset - [x0, y0]) * 16).astype(np.int32) for p in polys]
    cv2.fillPoly(mask, pts[:1], 1, lineType=cv2.LINE_8, shift=4)
    if len(pts) > 1:  # ring hole
        cv2.fillPoly(mask, pts[1:], 0, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool), (slice(y0, y1), slice(x0, x1))


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray, min_dist: float = 150.0) -> np.ndarray:
    """A random colour at least `min_dist` (L1 over BGR) from the mean colour it is drawn over."""
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - under).sum() >= min_dist:
            return colour
    return 255.0 - under


def _clutter(rng: np.random.Generator, img: np.ndarray, owner: np.ndarray) -> None:
    """A few thin lines on the background only, so edges alone do not mean an object."""
    n = int(rng.integers(0, 4)) if rng.random() < 0.4 else 0
    if n == 0:
        return
    h, w = owner.shape
    layer = np.zeros((h, w), np.uint8)
    for _ in range(n):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(layer, p1, p2, 1, thickness=int(rng.integers(1, 3)))
    sel = (layer > 0) & (owner < 0)
    img[sel] = rng.uniform(0, 255, 3)
