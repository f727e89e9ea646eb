"""``cache=ram`` under DDP: one copy of the resized images per node, in a shared-memory file every local rank maps.

The node's local rank 0 writes the images of a split into ``/dev/shm/detector-<token>-n<node>-<split>.bin``, with
an index beside it; after a barrier the other local ranks map the same file read-only, and once all have mapped it
the files are unlinked (the mappings stay valid, so a run killed later leaves nothing behind). Loader workers are
forked and share the same pages. numpy's memmap over tmpfs rather than a per-process list: the list is copied into
every rank.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
LoadedImage = tuple[np.ndarray, tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class SharedRam:
    """Where a split's shared image file lives and whether this process writes it (the node's local rank 0)."""

    path: Path
    write: bool

    @property
    def index_path(self) -> Path:
        return self.path.with_suffix(".idx.npz")

    def unlink(self) -> None:
        """Remove both files (every rank has mapped them by now); missing files are fine."""
        for p in (self.path, self.index_path):
            p.unlink(missing_ok=True)


def shared_ram_for(token: str, split: str, write: bool, directory: Path = SHM_DIR, node: int = 0) -> SharedRam:
    """The SharedRam of one split of one run on one node (``token`` is the same on every rank of the run; the node
    rank keeps two nodes apart that share a /dev/shm, as a multi-node run tried on one machine)."""
    return SharedRam(Path(directory) / f"detector-{token}-n{node}-{split}.bin", write)


class SharedImages:
    """Images stored back to back in one read-only mapping: ``images[i]`` is (HWC view, (h0, w0), (h, w)), or None
    for an image that is not stored (unreadable, or decoded to another size than its label file recorded)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, hw: np.ndarray, hw0: np.ndarray, ok: np.ndarray):
        self.data, self.offsets, self.hw, self.hw0, self.ok = data, offsets, hw, hw0, ok

    def __len__(self) -> int:
        return len(self.hw)

    def __getitem__(self, i: int) -> LoadedImage | None:
        if not self.ok[i]:
            return None
        h, w = (int(v) for v in self.hw[i])
        im = self.data[self.offsets[i] : self.offsets[i + 1]].reshape(h, w, 3)
        return im, (int(self.hw0[i, 0]), int(self.hw0[i, 1])), (h, w)

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])


def images_key(im_files: Sequence[str], imgsz: int, augment: bool) -> str:
    """What the file was written for: a reader with another image list, size or interpolation does not use it."""
    h = hashlib.sha1(f"{imgsz}|{int(augment)}|".encode())
    for f in im_files:
        h.update(str(f).encode() + b"\0")
    return h.hexdigest()


def free_bytes(directory: Path) -> int | None:
    """Bytes that may still be written under ``directory`` (a tmpfs is capped by its size), None if unknown."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def write_shared(
    shared: SharedRam,
    load: Callable[[int], tuple[np.ndarray | None, tuple[int, int], tuple[int, int]]],
    hw: np.ndarray,
    key: str,
    workers: int,
    available: int | None,
    margin: float,
) -> SharedImages | None:
    """Write every image ``load(i)`` returns into the shared file (slots sized by ``hw``, the resized (h, w) each
    image's label file implies) and its index; None, with a warning, when the node cannot hold them."""
    hw = np.asarray(hw, dtype=np.int64).reshape(-1, 2)
    offsets = np.zeros(len(hw) + 1, dtype=np.int64)
    np.cumsum(hw[:, 0] * hw[:, 1] * 3, out=offsets[1:])
    need = int(offsets[-1])
    limits = {"available memory": available, f"free space in {shared.path.parent}": free_bytes(shared.path.parent)}
    for what, have in limits.items():
        if have is None or need * margin > have:
            log.warning(
                "cache=ram: not caching images, %.2f GB needed (x%.1f margin) but %s is %s; give the node more "
                "shared memory (docker --shm-size) or use cache=disk",
                need / 1e9, margin, what, "unknown" if have is None else f"{have / 1e9:.2f} GB",
            )  # fmt: skip
            return None
    hw0 = np.zeros_like(hw)
    ok = np.zeros(len(hw), dtype=bool)
    try:
        _fill(np.memmap(shared.path, dtype=np.uint8, mode="w+", shape=(max(need, 1),)), load, hw, offsets, hw0, ok,
              workers)  # fmt: skip
        tmp = shared.index_path.with_suffix(".tmp.npz")
        np.savez(tmp, offsets=offsets, hw=hw, hw0=hw0, ok=ok, key=np.array(key))
        os.replace(tmp, shared.index_path)  # readers see the whole index or none
    except OSError as e:  # a full tmpfs raises SIGBUS on write to a mapping; its size was checked above
        log.warning("cache=ram: cannot write %s (%s); images are read from their files", shared.path, e)
        shared.unlink()
        return None
    log.info("cache=ram: %d images (%.2f GB) in %s, shared by this node's processes", ok.sum(), need / 1e9,
             shared.path)  # fmt: skip
    return open_shared(shared, key)


def _fill(data: np.memmap, load: Callable, hw: np.ndarray, offsets: np.ndarray, hw0: np.ndarray, ok: np.ndarray,
          workers: int) -> None:  # fmt: skip
    def fill(i: int) -> None:
        im, size0, _ = load(i)
        if im is None or im.shape != (hw[i, 0], hw[i, 1], 3) or im.dtype != np.uint8:
            return  # read from its file at every use, as without caching
        data[offsets[i] : offsets[i + 1]] = im.reshape(-1)
        hw0[i], ok[i] = size0, True

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(fill, range(len(hw))))
    data.flush()


def open_shared(shared: SharedRam, key: str) -> SharedImages | None:
    """Map the node's shared file read-only; None (images read from their files) when the writer wrote none."""
    try:
        with np.load(shared.index_path) as idx:
            offsets, hw, hw0, ok, written_for = (idx[k] for k in ("offsets", "hw", "hw0", "ok", "key"))
        data = np.memmap(shared.path, dtype=np.uint8, mode="r")
    except (OSError, ValueError, KeyError):
        log.debug("cache=ram: no shared image file %s on this node", shared.path)
        return None
    if str(written_for) != key:
        log.warning("cache=ram: %s was written for other images; images are read from their files", shared.path)
        return None
    return SharedImages(data, offsets, hw, hw0, ok)
