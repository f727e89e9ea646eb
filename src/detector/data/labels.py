"""Verify images and YOLO label files, collect labels, and cache the result next to the labels.

Policy (YOLOv5 `verify_image_label`): a bad image or a malformed label file drops the image; a missing
or empty label file keeps it as background; duplicate rows are removed. User files are never changed, except
truncated JPEGs when `repair_jpeg` is set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from detector.boxes import xyxy2xywh
from detector.data.config import img2label_paths
from detector.data.images import IMG_FORMATS, SWAPPING_ORIENTATIONS, exif_orientation, exif_size, read_image
from detector.data.report import INFO_KINDS, KINDS, DatasetReport

log = logging.getLogger(__name__)

CACHE_VERSION = "detector-labels-2"
CACHE_SUFFIX = ".detector.cache"
MIN_IMAGE_SIDE = 10  # YOLOv5 asserts both sides > 9 px
MAX_LOGGED_FILES = 10  # per-file messages logged; the rest are in the report


@dataclass
class LabelSet:
    """Verified images with their labels; only kept images appear, in input order."""

    im_files: list[str]
    label_files: list[str]
    labels: list[np.ndarray]  # (n, 5) float32 [cls, x, y, w, h], normalised
    sizes_wh: np.ndarray  # (N, 2) int original (w, h) after EXIF orientation
    segments: list[list[np.ndarray]]  # per image: polygons (k, 2) normalised; empty for box-only files
    report: DatasetReport


class ImageCheck(NamedTuple):
    """Outcome of verifying one image and its label file."""

    im_file: str
    label_file: str
    status: str  # found | missing | empty | corrupt
    labels: np.ndarray
    size_wh: tuple[int, int]  # original (w, h) after EXIF orientation
    segments: list[np.ndarray]
    notes: list[tuple[str, str, int]]  # (report kind, detail, items)


class _Drop(Exception):
    """The image is dropped for the given report kind."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def default_cache_path(sources: Sequence[str | Path], label_files: Sequence[str]) -> Path:
    """`<list>.detector.cache` when the only source is a txt list, else `<labels dir>.detector.cache` of the first
    label. Not YOLOv5's `labels.cache`, so that both tools can keep their own cache beside the same labels."""
    if len(sources) == 1 and Path(sources[0]).is_file():
        return Path(sources[0]).with_suffix(CACHE_SUFFIX)
    return Path(str(Path(label_files[0]).parent) + CACHE_SUFFIX)


def verify_image_label(im_file: str, label_file: str, nc: int | None = None, repair_jpeg: bool = False) -> ImageCheck:
    """Check one image and its label file; never raises for bad input (status 'corrupt' instead)."""
    notes: list[tuple[str, str, int]] = []
    try:
        size_wh = _check_image(im_file, repair_jpeg, notes)
        labels, segments, status = _read_labels(label_file, nc, notes)
    except _Drop as d:
        notes.append((d.kind, d.detail, 0))
        return ImageCheck(im_file, label_file, "corrupt", np.zeros((0, 5), np.float32), (0, 0), [], notes)
    return ImageCheck(im_file, label_file, status, labels, size_wh, segments, notes)


def _check_image(im_file: str, repair_jpeg: bool, notes: list) -> tuple[int, int]:
    try:
        nbytes = os.path.getsize(im_file)
    except OSError as e:
        raise _Drop("corrupt_image", f"cannot read image file: {e}") from e
    if nbytes == 0:
        raise _Drop("zero_byte", "zero-byte image file")
    try:
        with Image.open(im_file) as im:
            im.verify()
        with Image.open(im_file) as im:  # verify() leaves the image unusable, and must come first
            fmt = (im.format or "").lower()
            size_wh = exif_size(im)
            orientation = exif_orientation(im)
    except UnidentifiedImageError as e:
        raise _Drop("not_image", "not an image (unrecognised content)") from e
    except Exception as e:  # PIL raises many types for damaged files
        raise _Drop("corrupt_image", f"corrupt image: {type(e).__name__}: {e}") from e
    suffix = os.path.splitext(im_file)[1][1:].lower()
    if fmt not in IMG_FORMATS and not (fmt == "ppm" and suffix == "pfm"):
        raise _Drop("bad_format", f"image format '{fmt}' not supported (allowed: {', '.join(IMG_FORMATS)})")
    if min(size_wh) < MIN_IMAGE_SIDE:
        raise _Drop("too_small", f"image size {size_wh[0]}x{size_wh[1]} px, both sides must be >= {MIN_IMAGE_SIDE}")
    if orientation in SWAPPING_ORIENTATIONS:
        notes.append(("exif_rotated", f"EXIF orientation {orientation}: size taken as {size_wh[0]}x{size_wh[1]}", 0))
    if fmt == "jpeg" and _jpeg_truncated(im_file):
        if repair_jpeg:
            _repair_jpeg(im_file)
            notes.append(("jpeg_repaired", "truncated JPEG (no end marker) re-saved in place", 0))
        else:
            notes.append(("jpeg_truncated", "truncated JPEG (no end marker) kept unchanged", 0))
    return size_wh


def _jpeg_truncated(im_file: str) -> bool:
    with open(im_file, "rb") as f:
        f.seek(-2, os.SEEK_END)
        return f.read() != b"\xff\xd9"


def _repair_jpeg(im_file: str) -> None:
    # cv2, not PIL: decodes truncated JPEGs without PIL's global LOAD_TRUNCATED_IMAGES flag; applies EXIF.
    im = read_image(im_file)
    if im is None:
        raise _Drop("corrupt_image", "truncated JPEG that cannot be decoded for repair")
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        100,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    ]
    ok, buf = cv2.imencode(".jpg", im, params)
    if not ok:
        raise _Drop("corrupt_image", "truncated JPEG could not be re-encoded")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(im_file), suffix=".jpg.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        shutil.copymode(im_file, tmp)  # keep the user's file permissions
        os.replace(tmp, im_file)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _Drop("corrupt_image", f"truncated JPEG could not be rewritten: {e}") from e


def _read_labels(label_file: str, nc: int | None, notes: list) -> tuple[np.ndarray, list[np.ndarray], str]:
    empty = np.zeros((0, 5), np.float32)
    if not os.path.isfile(label_file):
        notes.append(("missing_label", f"no label file {label_file}", 0))
        return empty, [], "missing"
    try:
        with open(label_file, encoding="utf-8-sig") as f:  # tolerate a BOM
            rows = [line.split() for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise _Drop("bad_label", f"label file {label_file} unreadable: {e}") from e
    if not rows:
        notes.append(("empty_label", f"empty label file {label_file}", 0))
        return empty, [], "empty"

    boxes, polygons, poly_pts = [], [], []
    for i, row in enumerate(rows, 1):
        try:
            v = np.array([float(x) for x in row], np.float32)
        except ValueError as e:
            raise _Drop("bad_label", f"{label_file} line {i}: not numbers: {' '.join(row)[:80]}") from e
        if not np.isfinite(v).all():
            raise _Drop("bad_label", f"{label_file} line {i}: non-finite value")
        if len(v) == 5:
            x, y, w, h = v[1:]
            polygons.append(np.array([[x - w / 2, y - h / 2], [x + w / 2, y - h / 2], [x + w / 2, y + h / 2],
                                      [x - w / 2, y + h / 2]], np.float32))  # fmt: skip
            boxes.append(v)
        elif len(v) > 6 and len(v) % 2 == 1:
            pts = v[1:].reshape(-1, 2)
            poly_pts.append(pts.ravel())
            polygons.append(pts)
            box = xyxy2xywh(np.concatenate([pts.min(0), pts.max(0)]))
            boxes.append(np.concatenate([v[:1], box]).astype(np.float32))
        else:
            raise _Drop(
                "wrong_columns",
                f"{label_file} line {i}: {len(v)} values, expected 5 (class x y w h) or a polygon "
                f"(class + at least 3 x y pairs)",
            )
    lb = np.stack(boxes).astype(np.float32)
    coords = np.concatenate([lb[:, 1:].ravel(), *poly_pts])
    if (lb[:, 0] < 0).any() or (coords < 0).any():
        raise _Drop("negative", f"{label_file}: negative label values")
    if (coords > 1).any():
        raise _Drop("out_of_range", f"{label_file}: non-normalized or out of bounds coordinates (> 1)")
    cls = lb[:, 0]
    if (cls != np.floor(cls)).any():
        raise _Drop("bad_label", f"{label_file}: class ids must be integers, got {cls[cls != np.floor(cls)][0]:g}")
    if nc is not None and (cls >= nc).any():
        raise _Drop("class_out_of_range", f"{label_file}: class id {int(cls.max())} >= nc={nc} of the dataset yaml")
    _, keep = np.unique(lb, axis=0, return_index=True)
    if len(keep) < len(lb):
        keep = np.sort(keep)
        notes.append(("duplicates", f"{len(lb) - len(keep)} duplicate rows removed", len(lb) - len(keep)))
        lb = lb[keep]
        polygons = [polygons[j] for j in keep]
    return lb, (polygons if poly_pts else []), "found"


def _verify_args(args: tuple) -> ImageCheck:
    return verify_image_label(*args)


def _scan(im_files: list[str], label_files: list[str], nc: int | None, repair_jpeg: bool, workers: int) -> list:
    tasks = [(im, lb, nc, repair_jpeg) for im, lb in zip(im_files, label_files, strict=True)]
    if workers <= 1 or len(tasks) < 32:
        return [_verify_args(t) for t in tasks]
    # Threads, not processes: file IO and PIL release the GIL; no start-up/pickling cost (measured faster).
    with ThreadPool(workers) as pool:
        return list(pool.imap(_verify_args, tasks, chunksize=16))


def _cache_key(im_files: list[str], label_files: list[str], nc: int | None) -> str:
    h = hashlib.md5(f"{CACHE_VERSION}|nc={nc}|".encode())
    for f in (*im_files, *label_files):
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0-\n".encode())
    return h.hexdigest()


def _load_cache(cache_path: Path, key: str) -> dict | None:
    try:
        with open(cache_path, "rb") as f:
            cache = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated or foreign file: rebuild
        log.info("label cache %s unreadable (%s); rebuilding", cache_path, e)
        return None
    if not isinstance(cache, dict) or cache.get("version") != CACHE_VERSION or cache.get("hash") != key:
        return None
    return cache


def _save_cache(cache_path: Path, cache: dict) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=cache_path.parent, prefix=cache_path.name + ".", suffix=".tmp")
    except OSError as e:
        log.warning("label cache folder %s is not writeable (%s); carrying on without a cache", cache_path.parent, e)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(cache, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a dataset cache is shared like the labels
        os.replace(tmp, cache_path)
        log.info("label cache saved to %s", cache_path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        log.warning("could not write label cache %s (%s); carrying on without it", cache_path, e)


def _build(im_files, label_files, nc, repair_jpeg, workers, source) -> dict:
    report = DatasetReport(source=source)
    kept: dict[str, list] = {"im_files": [], "label_files": [], "labels": [], "sizes_wh": [], "segments": []}
    for r in _scan(im_files, label_files, nc, repair_jpeg, workers):
        report.total += 1
        for kind, detail, items in r.notes:
            report.add(kind, r.im_file, detail, items)
        if r.status == "corrupt":
            report.corrupt += 1
            continue
        setattr(report, r.status, getattr(report, r.status) + 1)
        kept["im_files"].append(r.im_file)
        kept["label_files"].append(r.label_file)
        kept["labels"].append(r.labels)
        kept["sizes_wh"].append(r.size_wh)
        kept["segments"].append(r.segments)
    kept["sizes_wh"] = np.array(kept["sizes_wh"], dtype=np.int64).reshape(-1, 2)
    kept["report"] = report.to_dict()
    return kept


def load_labels(
    im_files: Iterable[str],
    cache_path: Path | None = None,
    nc: int | None = None,
    repair_jpeg: bool = False,
    single_cls: bool = False,
    workers: int = 2,
    log_report: bool = True,
) -> LabelSet:
    """Verify every image and label file (or reuse the cache at `cache_path`) and return the kept ones.

    `nc` enables the class-id check (skipped when `single_cls`, which sets every class to 0). `log_report=False`
    keeps a reload quiet (the report was logged when the files were verified).
    Raises ValueError when no kept image has a label.
    """
    im_files = [str(f) for f in im_files]
    if not im_files:
        raise ValueError("load_labels: no image files given")
    label_files = img2label_paths(im_files)
    source = os.path.dirname(label_files[0])
    nc_check = None if single_cls else nc
    cache = _cached_or_verified(im_files, label_files, cache_path, nc_check, repair_jpeg, workers, log_report)
    report = DatasetReport.from_dict(cache["report"])
    labels = [lb.copy() for lb in cache["labels"]]
    if single_cls:
        for lb in labels:
            lb[:, 0] = 0
    if log_report:
        _log_report(report)
    if sum(len(lb) for lb in labels) == 0:
        raise ValueError(
            f"no usable labels in {source}: {report.total} images, {report.found} with labels, "
            f"{report.missing} missing label files, {report.empty} empty, {report.corrupt} dropped as corrupt"
            "; "
            "see report: " + "; ".join(report.lines() + report.file_messages()[:MAX_LOGGED_FILES])
        )
    return LabelSet(
        im_files=list(cache["im_files"]),
        label_files=list(cache["label_files"]),
        labels=labels,
        sizes_wh=np.asarray(cache["sizes_wh"]).copy(),
        segments=cache["segments"],
        report=report,
    )


def _cached_or_verified(
    im_files: list[str],
    label_files: list[str],
    cache_path: Path | None,
    nc_check: int | None,
    repair_jpeg: bool,
    workers: int,
    log_report: bool,
) -> dict:
    """The label cache at ``cache_path`` when it matches the files, else every file verified (and cached)."""
    source = os.path.dirname(label_files[0])
    cache = None
    cache_path = Path(cache_path) if cache_path is not None else None
    if cache_path is not None:
        key = _cache_key(im_files, label_files, nc_check)
        cache = _load_cache(cache_path, key)
        if cache is not None and repair_jpeg and cache["report"]["counts"].get("jpeg_truncated", 0):
            cache = None  # truncated JPEGs were kept last time; repair them now
        if cache is not None and log_report:
            log.info("labels from cache %s", cache_path)
    if cache is None:
        cache = _build(im_files, label_files, nc_check, repair_jpeg, workers, source)
        if cache_path is not None:
            cache["version"] = CACHE_VERSION
            if cache["report"]["counts"].get("jpeg_repaired", 0):
                key = _cache_key(im_files, label_files, nc_check)  # repaired files changed size and mtime
            cache["hash"] = key
            _save_cache(cache_path, cache)
    return cache


def _log_report(report: DatasetReport) -> None:
    log.info(report.summary())
    for line in report.lines(INFO_KINDS):
        log.info("%s: %s", report.source, line)
    problems = [k for k in KINDS if k not in INFO_KINDS]
    for line in report.lines(problems):
        log.warning("%s: %s", report.source, line)
    msgs = report.file_messages(problems)
    for m in msgs[:MAX_LOGGED_FILES]:
        log.warning("  %s", m)
    if len(msgs) > MAX_LOGGED_FILES:
        log.warning("  ... and %d more files (see the dataset report)", len(msgs) - MAX_LOGGED_FILES)
