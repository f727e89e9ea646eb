"""The YOLO train/val dataset: images and labels by index, each sample made by the sample recipe (see recipe)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from detector.data.albumentations_extras import AlbumentationsExtras
from detector.data.cpu_budget import threads_per_loader, usable_cpus
from detector.data.image_cache import ImageLoader, Reader
from detector.data.recipe import SampleRecipe
from detector.data.rendering import LetterboxInfo, Rendering
from detector.data.shared_ram import SharedRam
from detector.data.source import ImageSource

log = logging.getLogger(__name__)


def rect_batch_hw(wh: np.ndarray, batch_size: int, imgsz: int, stride: int, pad: float) -> np.ndarray:
    """YOLOv5's rect canvas (h, w) per batch of images sorted by aspect ratio h/w; wh is (n, 2) (w, h)."""
    ar = wh[:, 1] / wh[:, 0]
    bi = np.arange(len(ar)) // batch_size
    factors = np.ones((int(bi[-1]) + 1, 2))
    for b in range(len(factors)):
        group = ar[bi == b]
        lo, hi = group.min(), group.max()
        if hi < 1:
            factors[b] = [hi, 1]
        elif lo > 1:
            factors[b] = [1, 1 / lo]
    return np.ceil(factors * imgsz / stride + pad).astype(int) * stride


def to_chw_rgb(im: np.ndarray) -> np.ndarray:
    """HWC BGR(A) uint8 -> contiguous CHW RGB (cv2.split is ~2x faster than a strided numpy copy)."""
    planes = cv2.split(im)
    out = np.empty((3, *im.shape[:2]), np.uint8)
    out[0], out[1], out[2] = planes[2], planes[1], planes[0]
    return out


class YoloDataset(Dataset):
    """YOLO-format images and labels with YOLOv5's training augmentation or plain letterboxing for validation.

    ``labelset`` has ``im_files``, ``labels`` (list of (n, 5) ``[cls, x, y, w, h]`` normalised), ``sizes_wh``
    ((n, 2) original (w, h)) and ``segments`` (per image, a list of normalised (k, 2) polygons). Items are
    ``(index, epoch)`` tuples from EpochSampler or plain ints (epoch 0); ``recipe`` makes each sample from
    (seed, epoch, index) alone. Batches are fetched by a thread pool: ``threads`` threads (0: up to 8, one per
    CPU) when loading in the main process, ``cpus`` (this rank's CPUs; 0: all usable) split among the loader workers
    inside them.

    The settings the config owns have no defaults here. ``rendering`` is conf/augment's node (see
    rendering.Rendering); the albumentations stage is passed built (``albumentations``), None for none; ``pad`` is
    the rect batches' padding in strides (YOLOv5: 0 for training, 0.5 for validation). ``shared_ram``: the node's
    shared file for ``cache='ram'`` under DDP (see shared_ram).
    """

    def __init__(
        self,
        labelset: Any,
        *,
        imgsz: int,
        rendering: Mapping[str, Any],
        batch_size: int,
        hyp: Mapping[str, Any],
        augment: bool,
        rect: bool,
        stride: int,
        seed: int,
        epochs: int,
        close_mosaic: int,
        cache: str | None,
        workers: int,
        pad: float = 0.0,
        albumentations: AlbumentationsExtras | Sequence[Any] | None = None,
        cache_dir: str | Path | None = None,
        names: Mapping[int, str] | None = None,
        reader: Reader | None = None,
        threads: int = 0,
        shared_ram: SharedRam | None = None,
        cpus: int = 0,
    ):
        self.imgsz = int(imgsz)
        self.augment = bool(augment)
        self.rect = bool(rect)
        self.stride = int(stride)
        self.seed = int(seed)
        self.names = dict(names) if names is not None else {}
        im_files, labels, segments, sizes_wh = _columns(labelset)
        self.batch_hw = self.batch_index = None
        if self.rect:
            if self.augment:
                log.warning("rect training: mosaic and shuffling are off (YOLOv5 behaviour)")
            order = np.argsort(sizes_wh[:, 1] / sizes_wh[:, 0], kind="stable")
            im_files, labels, segments = ([col[i] for i in order] for col in (im_files, labels, segments))
            sizes_wh = sizes_wh[order]
            self.batch_index = np.arange(len(im_files)) // batch_size
            self.batch_hw = rect_batch_hw(sizes_wh, batch_size, self.imgsz, self.stride, pad)
        if not (isinstance(albumentations, AlbumentationsExtras) or albumentations is None):
            albumentations = AlbumentationsExtras(albumentations)
        rendering = Rendering.from_conf(rendering)
        self.recipe = SampleRecipe(
            imgsz=self.imgsz, augment=self.augment, mosaic=self.augment and not self.rect, epochs=int(epochs),
            close_mosaic=int(close_mosaic), hyp=dict(hyp), rendering=rendering, albumentations=albumentations,
        )  # fmt: skip
        if reader is None:
            from detector.data.images import read_image as reader
        images = ImageLoader(im_files, self.imgsz, self.augment, reader, cache, cache_dir, workers, sizes_wh=sizes_wh,
                             shared=shared_ram)  # fmt: skip
        self.source = ImageSource(
            images, labels, segments, sizes_wh, imgsz=self.imgsz, reduced_decoding=rendering.reduced_decoding
        )
        self.recipe.warn_unusable(self.source)
        self.cpus = int(cpus) or usable_cpus()  # this rank's share of the machine's CPUs
        self.threads = int(threads) if threads else min(8, self.cpus)
        self._pool: tuple[int, ThreadPoolExecutor] | None = None  # (owner pid, pool)

    @property
    def im_files(self) -> list[str]:
        return self.source.images.im_files

    @property
    def labels(self) -> list[np.ndarray]:
        return self.source.labels

    @property
    def segments(self) -> list[list[np.ndarray]]:
        return self.source.segments

    @property
    def sizes_wh(self) -> np.ndarray:
        return self.source.sizes_wh

    @property
    def images(self) -> ImageLoader:
        return self.source.images

    @property
    def n(self) -> int:
        return self.source.n

    def __len__(self) -> int:
        return self.source.n

    def __getitems__(self, items: Sequence[int | tuple[int, int]]) -> list:
        """A batch of samples computed by a thread pool (OpenCV and numpy release the GIL): ``threads`` threads
        in the main process, the rank's CPUs split among the loader workers inside them. Same samples either way."""
        info = get_worker_info()
        threads = self.threads if info is None else threads_per_loader(self.cpus, info.num_workers)
        if min(threads, len(items)) < 2:
            return [self[i] for i in items]
        if self._pool is None or self._pool[0] != os.getpid():  # a pool inherited through fork has no threads
            self._pool = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix="yolo-dataset"))
        return list(self._pool[1].map(self.__getitem__, items))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}

    def mosaic_active(self, epoch: int) -> bool:
        """Whether mosaic may run at this epoch (see SampleRecipe.mosaic_active)."""
        return self.recipe.mosaic_active(epoch)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str, LetterboxInfo]:
        index, epoch = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), 0)
        canvas = tuple(int(x) for x in self.batch_hw[self.batch_index[index]]) if self.rect else (self.imgsz,) * 2
        index, img, labels, info = self.recipe(self.source, self.seed, epoch, index, canvas)
        labels_out = np.zeros((len(labels), 6), np.float32)
        labels_out[:, 1:] = labels
        return torch.from_numpy(to_chw_rgb(img)), torch.from_numpy(labels_out), self.im_files[index], info

    @staticmethod
    def collate_fn(
        batch: Sequence[tuple[torch.Tensor, torch.Tensor, str, LetterboxInfo]],
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple[LetterboxInfo, ...]]:
        """Stack images (B, 3, H, W); concatenate targets (N, 6) with each image's batch index in column 0."""
        imgs, labels, paths, infos = zip(*batch, strict=True)
        for i, lb in enumerate(labels):
            lb[:, 0] = i
        return stack_images(imgs), torch.cat(labels, 0), paths, infos


def stack_images(imgs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (3, H, W) uint8 images into (B, 3, H, W).

    In a loader worker, default_collate writes straight into shared memory (no copy when sent to the main
    process); in the main process numpy's single-threaded copy is used, because torch's multi-threaded copy
    stalls badly when the cores are busy (measured 128 ms vs 4 ms for 16 images of 640 px).
    """
    if get_worker_info() is not None:
        return default_collate(list(imgs))
    return torch.from_numpy(np.stack([im.numpy() for im in imgs]))


def _columns(labelset: Any) -> tuple[list[str], list[np.ndarray], list[list[np.ndarray]], np.ndarray]:
    """(im_files, labels, segments, sizes_wh) of a labelset, checked to be non-empty and of one length."""
    im_files = [str(f) for f in labelset.im_files]
    labels = [np.asarray(lb, np.float32).reshape(-1, 5) for lb in labelset.labels]
    segments = getattr(labelset, "segments", None) or [[] for _ in im_files]
    segments = [[np.asarray(p, np.float32).reshape(-1, 2) for p in segs] for segs in segments]
    sizes_wh = np.asarray(labelset.sizes_wh, np.float64).reshape(-1, 2)
    if not im_files:
        raise ValueError("the dataset has no images")
    if not (len(labels) == len(segments) == len(sizes_wh) == len(im_files)):
        raise ValueError("labelset im_files, labels, segments and sizes_wh must have the same length")
    return im_files, labels, segments, sizes_wh
