"""Image loading for the datasets: decode, resize to the training size, optionally cached in RAM or on disk.

``cache='ram'`` keeps the resized images in memory after checking that they fit; ``cache='disk'`` keeps the
decoded originals as ``.npy`` files in a cache folder given by the caller (never inside the dataset itself). Under
DDP the datamodule writes them once per node, before the ranks build their loaders (``write_disk_cache``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from detector.data.shared_ram import LoadedImage, SharedImages, SharedRam, images_key, open_shared, write_shared

log = logging.getLogger(__name__)

# reader(path, reduce) -> BGR image decoded at 1/reduce of its size (reduce 1, 2, 4 or 8), None if unreadable
Reader = Callable[[str, int], "np.ndarray | None"]


def available_ram() -> int | None:
    """Bytes of memory available to new allocations (MemAvailable), None when it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def long_side_size(h0: int, w0: int, imgsz: int) -> tuple[int, int]:
    """(h, w) of an h0 x w0 image resized so that its long side is ``imgsz``: ``ceil(side * r)``, r = imgsz / long
    side, in floating point exactly as YOLOv5's load_image, so the long side is imgsz + 1 where ``long * r`` rounds
    above imgsz (1.25 % of the built-in images at 160 px: clamping it moved their pixels and labels off YOLOv5's)."""
    r = imgsz / max(h0, w0)
    return math.ceil(h0 * r), math.ceil(w0 * r)


def resize_long_side(im: np.ndarray, imgsz: int, augment: bool) -> np.ndarray:
    """Resize so that the long side is ``imgsz`` (short side rounded up): linear when augmenting or
    upsampling, area otherwise (as YOLOv5's load_image)."""
    h0, w0 = im.shape[:2]
    h, w = long_side_size(h0, w0, imgsz)
    if (h, w) == (h0, w0):
        return im
    interp = cv2.INTER_LINEAR if (augment or imgsz > max(h0, w0)) else cv2.INTER_AREA
    return cv2.resize(im, (w, h), interpolation=interp)


def disk_cache_path(cache_dir: Path, im_file: str) -> Path:
    """The .npy file of one image in the disk cache: its stem plus a hash of its full path (no clashes)."""
    digest = hashlib.md5(str(im_file).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"{Path(im_file).stem}_{digest}.npy"


class ImageLoader:
    """Loads image ``i`` as (resized BGR image, (h0, w0), (h, w)); None for the image when it cannot be read.

    ``cache``: None, ``'ram'`` or ``'disk'`` (``cache_dir`` required). RAM caching falls back to no caching,
    with a warning, when the estimated need (30 sampled images, x ``ram_margin``) exceeds available memory. With
    ``shared`` (DDP) the RAM cache is one file per node that the local ranks share (shared_ram); its slots are
    sized from ``sizes_wh``, the (w, h) the label files recorded.
    """

    def __init__(
        self,
        im_files: Sequence[str],
        imgsz: int,
        augment: bool,
        reader: Reader,
        cache: str | None = None,
        cache_dir: str | Path | None = None,
        workers: int = 2,
        ram_margin: float = 1.1,
        ram_samples: int = 30,
        seed: int = 0,
        sizes_wh: np.ndarray | None = None,
        shared: SharedRam | None = None,
    ):
        if cache not in (None, False, "ram", "disk"):
            raise ValueError(f"cache must be null, 'ram' or 'disk', got {cache!r}")
        self.im_files = list(im_files)
        self.imgsz = imgsz
        self.augment = augment
        self.reader = reader
        self.cache = cache or None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.ram: list[LoadedImage | None] | SharedImages | None = None
        self.npy: list[Path] | None = None
        if self.cache == "ram" and shared is not None:
            if sizes_wh is None:
                raise ValueError("a shared RAM cache needs sizes_wh to size its slots")
            self.ram = self._shared_ram(shared, np.asarray(sizes_wh), workers, ram_margin)
        elif self.cache == "ram":
            if self._ram_fits(ram_margin, ram_samples, seed):
                self._fill_ram(workers)
        elif self.cache == "disk":
            self._fill_disk(workers)

    def __len__(self) -> int:
        return len(self.im_files)

    def load(self, i: int) -> tuple[np.ndarray | None, tuple[int, int], tuple[int, int]]:
        """Image i resized to long side imgsz, with its original and resized (h, w)."""
        if self.ram is not None and self.ram[i] is not None:
            return self.ram[i]
        im = self.decode(i)
        if im is None:
            return None, (0, 0), (0, 0)
        h0, w0 = im.shape[:2]
        im = resize_long_side(im, self.imgsz, self.augment)
        return im, (h0, w0), im.shape[:2]

    def decode(self, i: int, reduce: int = 1) -> np.ndarray | None:
        """Image i as cached in RAM (resized), else decoded at 1/reduce of its size where the reader can
        (not from the disk cache); for callers that resample it themselves."""
        if self.ram is not None and self.ram[i] is not None:
            return self.ram[i][0]
        if self.npy is not None:
            try:
                return np.load(self.npy[i])
            except (OSError, ValueError):
                pass  # a missing or damaged cache file: read the image itself
        return self.reader(self.im_files[i], reduce)

    def _ram_fits(self, margin: float, samples: int, seed: int) -> bool:
        n = len(self.im_files)
        rng = np.random.default_rng(seed)
        picks = rng.choice(n, size=min(samples, n), replace=False)
        nbytes = 0
        for i in picks:
            im = self.reader(self.im_files[i], 1)
            if im is not None:
                nbytes += im.nbytes * (self.imgsz / max(im.shape[:2])) ** 2
        need = nbytes * n / len(picks) * margin
        avail = available_ram()
        if avail is None or need < avail:
            log.info("caching images in RAM: %.1f GB needed, %s available", need / 1e9, _gb(avail))
            return True
        log.warning(
            "cache=ram: not caching images, %.1f GB needed (x%.1f margin) but only %s available",
            need / 1e9,
            margin,
            _gb(avail),
        )
        return False

    def _shared_ram(self, shared: SharedRam, sizes_wh: np.ndarray, workers: int, margin: float) -> SharedImages | None:
        key = images_key(self.im_files, self.imgsz, self.augment)
        if not shared.write:
            return open_shared(shared, key)
        hw = [long_side_size(int(h0), int(w0), self.imgsz) for w0, h0 in sizes_wh.reshape(-1, 2)]
        return write_shared(shared, self.load, np.array(hw).reshape(-1, 2), key, workers, available_ram(), margin)

    def _fill_ram(self, workers: int) -> None:
        self.ram = [None] * len(self.im_files)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for i, loaded in enumerate(pool.map(self.load, range(len(self.im_files)))):
                self.ram[i] = loaded if loaded[0] is not None else None

    def _fill_disk(self, workers: int) -> None:
        if self.cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir for the .npy files")
        self.npy = write_disk_cache(self.im_files, self.cache_dir, self.reader, workers)


def write_disk_cache(im_files: Sequence[str], cache_dir: Path, reader: Reader, workers: int) -> list[Path] | None:
    """Decode the images that have no .npy file in ``cache_dir`` yet and save them there; returns the .npy paths
    of all images, or None (with a warning) when the folder cannot be written.

    Files already there are kept untouched, so a second caller (another rank, after the node's local rank 0 wrote
    them in ``prepare_data``) only reads."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("cache=disk: cannot create %s (%s); images are read from their files", cache_dir, e)
        return None
    paths = [disk_cache_path(cache_dir, f) for f in im_files]

    def write(i: int) -> str:
        if paths[i].exists():
            return "found"
        im = reader(im_files[i], 1)
        if im is None:
            return "unreadable"
        _save_npy(paths[i], im)
        return "written"

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            outcomes = list(pool.map(write, range(len(paths))))
    except OSError as e:
        log.warning("cache=disk: cannot write to %s (%s); images are read from their files", cache_dir, e)
        return None
    counts = {k: outcomes.count(k) for k in ("written", "found", "unreadable")}
    log.info("cache=disk: %d images decoded to .npy, %d already there, %d unreadable in %s",
             counts["written"], counts["found"], counts["unreadable"], cache_dir)  # fmt: skip
    return paths


def _save_npy(path: Path, im: np.ndarray) -> None:
    """Save ``im`` as ``path`` through a temporary name of this call alone (pid and a random part), replaced
    atomically: no two writers share a file, and a reader never sees a half-written one."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, im)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _gb(nbytes: int | None) -> str:
    return "unknown" if nbytes is None else f"{nbytes / 1e9:.1f} GB"
