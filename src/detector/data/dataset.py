"""The YOLO train/val dataset: YOLOv5's sample pipeline as a pure function of (seed, epoch, index)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from detector.boxes import xywhn2xyxy, xyxy2xywhn
from detector.data.albumentations_extras import AlbumentationsExtras
from detector.data.augment import copy_paste, flip_lr, flip_ud, mixup
from detector.data.geometry import Warp, apply_warp, draw_warp, source_roi, warp_targets
from detector.data.image_cache import ImageLoader, Reader, long_side_size
from detector.data.letterbox import PAD_GREY, LetterboxGeometry, letterbox, letterbox_geometry
from detector.data.mosaic import mosaic4, mosaic4_warped, mosaic9
from detector.data.photometric import augment_hsv
from detector.data.resample import draw_tile, output_rect

log = logging.getLogger(__name__)

AUGMENT_HYP_KEYS = (
    "hsv_h",
    "hsv_s",
    "hsv_v",
    "degrees",
    "translate",
    "scale",
    "shear",
    "perspective",
    "flipud",
    "fliplr",
    "mosaic",
    "mixup",
    "copy_paste",
)
BOX_KEYS = ("wh_thr", "ar_thr", "area_thr", "area_thr_segments")  # warp_targets' box-candidate thresholds
RENDERING_KEYS = ("mosaic9", "one_pass", "reduced_decoding", "pixel_centres", "mixup_beta", *BOX_KEYS)
Shapes = tuple[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]] | None


def rect_batch_shapes(wh: np.ndarray, batch_size: int, imgsz: int, stride: int, pad: float) -> np.ndarray:
    """YOLOv5 rect shapes (h, w) per batch of images sorted by aspect ratio h/w; wh is (n, 2) (w, h)."""
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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def to_chw_rgb(im: np.ndarray) -> np.ndarray:
    """HWC BGR(A) uint8 -> contiguous CHW RGB (cv2.split is ~2x faster than a strided numpy copy)."""
    planes = cv2.split(im)
    out = np.empty((3, *im.shape[:2]), np.uint8)
    out[0], out[1], out[2] = planes[2], planes[1], planes[0]
    return out


class YoloDataset(Dataset):
    """YOLO-format images and labels with YOLOv5's training augmentation or plain letterboxing for validation.

    ``labelset`` has ``im_files``, ``labels`` (list of (n, 5) ``[cls, x, y, w, h]`` normalised), ``shapes``
    ((n, 2) (w, h)) and ``segments`` (per image, a list of normalised (k, 2) polygons). Items are
    ``(index, epoch)`` tuples from EpochSampler or plain ints (epoch 0); each sample draws all its randomness
    from ``np.random.default_rng([seed, epoch, index])``. ``one_pass`` renders axis-aligned warps straight from
    the decoded files (see resample), JPEGs decoded at 1/2-1/8 size where the zoom allows (``reduced_decoding``);
    False (YOLOv5's path) keeps YOLOv5's resize, canvas and warp for every sample. ``pixel_centres`` moves labels
    as OpenCV moves pixels (see warp_targets) and by the rounded letterbox padding; False keeps YOLOv5's labels.
    Batches are fetched by a thread pool: ``threads`` threads (0: up to 8, one per CPU) when loading in the
    main process, the CPUs left per worker inside loader workers.

    ``rendering`` is conf/augment's node (its keys in ``RENDERING_KEYS``, no defaults here: the config owns them);
    the albumentations stage is passed built (``albumentations``), None for none.
    """

    def __init__(
        self,
        labelset: Any,
        *,
        imgsz: int,
        rendering: Mapping[str, Any],
        batch_size: int = 16,
        hyp: Mapping[str, Any] | None = None,
        augment: bool = False,
        rect: bool = False,
        stride: int = 32,
        pad: float = 0.0,
        seed: int = 0,
        epochs: int = 300,
        close_mosaic: int = 0,
        albumentations: AlbumentationsExtras | Sequence[Any] | None = None,
        cache: str | None = None,
        cache_dir: str | Path | None = None,
        names: Mapping[int, str] | None = None,
        reader: Reader | None = None,
        workers: int = 2,
        threads: int = 0,
    ):
        self.imgsz = int(imgsz)
        self.augment = bool(augment)
        self.rect = bool(rect)
        self.stride = int(stride)
        self.seed = int(seed)
        self.epochs = int(epochs)
        self.close_mosaic = int(close_mosaic)
        missing = [k for k in RENDERING_KEYS if k not in rendering]
        if missing:
            raise KeyError(f"rendering settings (conf/augment) are missing {missing}")
        self.mosaic9 = bool(rendering["mosaic9"])
        self.one_pass = bool(rendering["one_pass"])
        self.reduced_decoding = bool(rendering["reduced_decoding"])
        self.mixup_beta = float(rendering["mixup_beta"])
        self.box_args = {k: rendering[k] for k in BOX_KEYS} | {"pixel_centres": bool(rendering["pixel_centres"])}
        self.hyp = dict(hyp or {})
        missing = [k for k in AUGMENT_HYP_KEYS if k not in self.hyp]
        if self.augment and missing:
            raise KeyError(f"hyp is missing augmentation keys {missing} (YOLOv5 hyp files define all of them)")
        self.names = dict(names) if names is not None else {}
        self._take_labelset(labelset)
        self.mosaic = self.augment and not self.rect  # close_mosaic is applied per epoch in mosaic_active
        self.mosaic_border = ((-self.imgsz) // 2, (-self.imgsz) // 2)
        self.batch_shapes = self.batch_index = None
        if self.rect:
            self._plan_rect_batches(batch_size, pad)
        if isinstance(albumentations, AlbumentationsExtras) or albumentations is None:
            self.albumentations = albumentations
        else:
            self.albumentations = AlbumentationsExtras(albumentations)
        self.has_polygons = any(self.segments)
        if self.augment and self.hyp["copy_paste"] > 0 and not self.has_polygons:
            log.warning(
                "copy_paste=%s needs polygon labels; this dataset has boxes only: skipped", self.hyp["copy_paste"]
            )
        if reader is None:
            from detector.data.images import read_image as reader
        self.images = ImageLoader(self.im_files, self.imgsz, self.augment, reader, cache, cache_dir, workers)
        self._bad: set[int] = set()
        self.threads = int(threads) if threads else min(8, usable_cpus())
        self._pool: tuple[int, ThreadPoolExecutor] | None = None  # (owner pid, pool)

    def _take_labelset(self, labelset: Any) -> None:
        self.im_files = [str(f) for f in labelset.im_files]
        self.labels = [np.asarray(lb, np.float32).reshape(-1, 5) for lb in labelset.labels]
        segments = getattr(labelset, "segments", None) or [[] for _ in self.im_files]
        self.segments = [[np.asarray(s, np.float32).reshape(-1, 2) for s in segs] for segs in segments]
        self.shapes = np.asarray(labelset.shapes, np.float64).reshape(-1, 2)
        self.n = len(self.im_files)
        if self.n == 0:
            raise ValueError("the dataset has no images")
        if not (len(self.labels) == len(self.segments) == len(self.shapes) == self.n):
            raise ValueError("labelset im_files, labels, segments and shapes must have the same length")

    def _plan_rect_batches(self, batch_size: int, pad: float) -> None:
        if self.augment:
            log.warning("rect training: mosaic and shuffling are off (YOLOv5 behaviour)")
        self._sort_by_aspect_ratio()
        self.batch_index = np.arange(self.n) // batch_size
        self.batch_shapes = rect_batch_shapes(self.shapes, batch_size, self.imgsz, self.stride, pad)

    def _sort_by_aspect_ratio(self) -> None:
        order = np.argsort(self.shapes[:, 1] / self.shapes[:, 0], kind="stable")
        self.im_files = [self.im_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.segments = [self.segments[i] for i in order]
        self.shapes = self.shapes[order]

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, items: Sequence[int | tuple[int, int]]) -> list:
        """A batch of samples computed by a thread pool (OpenCV and numpy release the GIL): ``threads`` threads
        in the main process, the cores left per worker inside loader workers. Same samples either way."""
        info = get_worker_info()
        threads = self.threads if info is None else usable_cpus() // info.num_workers
        if min(threads, len(items)) < 2:
            return [self[i] for i in items]
        if self._pool is None or self._pool[0] != os.getpid():  # a pool inherited through fork has no threads
            self._pool = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix="yolo-dataset"))
        return list(self._pool[1].map(self.__getitem__, items))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None}

    def mosaic_active(self, epoch: int) -> bool:
        """Whether mosaic may run at this epoch: augmenting, not rect, before the last close_mosaic epochs."""
        return self.mosaic and not (self.close_mosaic > 0 and epoch >= self.epochs - self.close_mosaic)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str, Shapes]:
        index, epoch = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), 0)
        rng = np.random.default_rng([self.seed, epoch, index])
        hyp = self.hyp
        if self.mosaic_active(epoch) and rng.random() < hyp["mosaic"]:
            img, labels = self._mosaic(index, rng)
            if rng.random() < hyp["mixup"]:
                img2, labels2 = self._mosaic(int(rng.integers(self.n)), rng)
                img, labels = mixup(img, labels, img2, labels2, rng, self.mixup_beta)
            shapes = None
        else:
            index, img, labels, shapes = self._letterboxed(index, rng)

        if len(labels):
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        if self.augment:
            if self.albumentations:
                img, labels = self.albumentations(img, labels, rng)
            img = augment_hsv(img, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], rng, inplace=True)  # img is ours
            if rng.random() < hyp["flipud"]:
                img, labels = flip_ud(img, labels)
            if rng.random() < hyp["fliplr"]:
                img, labels = flip_lr(img, labels)

        labels_out = np.zeros((len(labels), 6), np.float32)
        labels_out[:, 1:] = labels
        return torch.from_numpy(to_chw_rgb(img)), torch.from_numpy(labels_out), self.im_files[index], shapes

    def _letterboxed(self, index: int, rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray, Shapes]:
        """Image ``index`` (or the readable one standing in for it) letterboxed to imgsz or its rect batch
        shape, then, when augmenting, moved by random_perspective; returns (index, image, pixel-xyxy labels,
        shapes)."""
        shape = tuple(int(x) for x in self.batch_shapes[self.batch_index[index]]) if self.rect else self.imgsz
        canvas = (shape, shape) if isinstance(shape, int) else shape  # (h, w)
        h = self.hyp
        warp = None
        if self.augment:  # the draws random_perspective makes on the letterboxed image
            warp = draw_warp(canvas, rng, h["degrees"], h["translate"], h["scale"], h["shear"], h["perspective"])
        moves = warp is not None and bool((warp.M != np.eye(3)).any())
        if warp is not None and self._one_pass(warp, needs_canvas=not moves):
            return self._letterboxed_warped(index, canvas, warp)
        index, img, (h0, w0), (hh, ww) = self._load(index)
        img, ratio, _ = letterbox(img, shape, auto=False, scaleup=self.augment)
        pad = self._label_pad(letterbox_geometry((hh, ww), shape, scaleup=self.augment))
        labels = self.labels[index].copy()
        if len(labels):
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * ww, ratio[1] * hh, pad[0], pad[1])
        if warp is not None:
            if moves:
                img = apply_warp(img, warp)
            labels = warp_targets(labels, (), warp, **self.box_args)
        return index, img, labels, ((h0, w0), ((hh / h0, ww / w0), pad))

    def _letterboxed_warped(
        self, index: int, canvas: tuple[int, int], warp: Warp
    ) -> tuple[int, np.ndarray, np.ndarray, Shapes]:
        """``_letterboxed`` for an axis-aligned warp, rendered in one pass from the decoded file (see resample)."""
        (hh, ww), _, _ = self._tile_info(index)
        zoom = warp.M[0, 0] * letterbox_geometry((hh, ww), canvas).ratio_wh[0]
        img, j, extent = self._load_tile(index, zoom)
        (hh, ww), labels, _ = self._tile_info(j)
        g = letterbox_geometry((hh, ww), canvas)
        top, _, left, _ = g.borders
        out = np.full((*canvas, 3), PAD_GREY, np.uint8)
        rect = output_rect(left, top, *g.unpad_wh, canvas[::-1], warp)
        dx, dy = draw_tile(out, img, left, top, *g.unpad_wh, rect, warp, extent) if rect is not None else (0.0, 0.0)
        labels = labels.copy()
        pad = self._label_pad(g)
        if len(labels):  # labels follow the pixels' sub-pixel landing offset (dx, dy)
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], g.ratio_wh[0] * ww, g.ratio_wh[1] * hh, pad[0] + dx, pad[1] + dy)
        w0, h0 = (int(v) for v in self.shapes[j])
        return j, out, warp_targets(labels, (), warp, **self.box_args), ((h0, w0), ((hh / h0, ww / w0), pad))

    def _one_pass(self, warp: Warp, needs_canvas: bool) -> bool:
        """The one rule for the path: one-pass rendering when it is on, the warp is axis-aligned and nothing needs
        YOLOv5's canvas (mosaic9, copy-paste, or an identity warp that leaves a plain letterbox); else YOLOv5's."""
        return self.one_pass and warp.axis_aligned and not needs_canvas

    def _label_pad(self, g: LetterboxGeometry) -> tuple[float, float]:
        """Where labels go on a letterboxed image: the rounded borders the pixels sit at (``pixel_centres``), or
        YOLOv5's unrounded (dw / 2, dh / 2)."""
        return (g.borders[2], g.borders[0]) if self.box_args["pixel_centres"] else g.pad_wh

    def _mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Mosaic, copy-paste and the perspective warp that crops the 2s canvas to s x s."""
        s, cp = self.imgsz, self.hyp["copy_paste"]
        h = self.hyp
        warp = draw_warp((2 * s, 2 * s), rng, h["degrees"], h["translate"], h["scale"], h["shear"],
                         h["perspective"], self.mosaic_border)  # fmt: skip
        full = (cp > 0 and self.has_polygons) or warp.perspective  # copy-paste mirrors the whole canvas
        if self._one_pass(warp, needs_canvas=self.mosaic9 or full):  # every YOLOv5 hyp file, with mosaic4
            img, labels, segments = mosaic4_warped(self._tile_info, self._load_tile, index, self.n, s, rng, warp)
            return img, warp_targets(labels, segments, warp, **self.box_args)
        if self.mosaic9:
            img, labels, segments = mosaic9(self._load_for_mosaic, index, self.n, s, rng)
        else:  # fill only the canvas part the warp reads, unless copy-paste mirrors the whole canvas
            roi = None if full else source_roi(warp, (2 * s, 2 * s))
            img, labels, segments = mosaic4(self._load_for_mosaic, index, self.n, s, rng, roi)
        if cp > 0 and len(segments) == len(labels):  # polygons for every label
            img, labels, segments = copy_paste(img, labels, segments, cp, rng)
        img = apply_warp(img, warp)
        return img, warp_targets(labels, segments, warp, **self.box_args)

    def _load_for_mosaic(self, i: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        i, img, _, _ = self._load(i)
        return img, self.labels[i], self.segments[i]

    def _tile_info(self, i: int) -> tuple[tuple[int, int], np.ndarray, list[np.ndarray]]:
        w0, h0 = self.shapes[i]
        return long_side_size(int(h0), int(w0), self.imgsz), self.labels[i], self.segments[i]

    def _load_tile(self, i: int, zoom: float) -> tuple[np.ndarray, int, tuple[float, float]]:
        """Image i (or the next readable one) decoded at the smallest 1/2^k size (k <= 3) that is still at least
        ``zoom`` times its size on the mosaic canvas; also the index returned and the extent (w, h) of its content
        in decoded pixels."""
        for j in self._readable(i):
            (_, w), _, _ = self._tile_info(j)
            reduce, (w0, h0) = 1, self.shapes[j]
            while self.reduced_decoding and reduce < 8 and w0 / (2 * reduce) >= zoom * w:
                reduce *= 2
            img = self.images.decode(j, reduce)
            if img is not None:
                extent = (float(img.shape[1]), float(img.shape[0]))
                if reduce > 1 and img.shape[:2] == (math.ceil(h0 / reduce), math.ceil(w0 / reduce)):
                    # libjpeg's scaled decoding returns ceil(w0 / k) pixels, the last one only partly covered
                    extent = (w0 / reduce, h0 / reduce)
                return img, j, extent
            self._mark_bad(j)
        raise RuntimeError(f"none of the {self.n} images of the dataset can be read")

    def _load(self, i: int) -> tuple[int, np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i resized, or, if it cannot be read, the next readable image (logged once per file)."""
        for j in self._readable(i):
            img, hw0, hw = self.images.load(j)
            if img is not None:
                return j, img, hw0, hw
            self._mark_bad(j)
        raise RuntimeError(f"none of the {self.n} images of the dataset can be read")

    def _readable(self, i: int) -> Iterator[int]:
        """Indices from i onwards (wrapping round) not yet found unreadable."""
        for k in range(self.n):
            j = (i + k) % self.n
            if j not in self._bad:
                yield j

    def _mark_bad(self, j: int) -> None:
        self._bad.add(j)
        log.warning("cannot read image %s; using the next readable image in its place", self.im_files[j])

    @staticmethod
    def collate_fn(
        batch: Sequence[tuple[torch.Tensor, torch.Tensor, str, Shapes]],
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple[Shapes, ...]]:
        """Stack images (B, 3, H, W); concatenate targets (N, 6) with each image's batch index in column 0."""
        imgs, labels, paths, shapes = zip(*batch, strict=True)
        for i, lb in enumerate(labels):
            lb[:, 0] = i
        return stack_images(imgs), torch.cat(labels, 0), paths, shapes


def stack_images(imgs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (3, H, W) uint8 images into (B, 3, H, W).

    In a loader worker, default_collate writes straight into shared memory (no copy when sent to the main
    process); in the main process numpy's single-threaded copy is used, because torch's multi-threaded copy
    stalls badly when the cores are busy (measured 128 ms vs 4 ms for 16 images of 640 px).
    """
    if get_worker_info() is not None:
        return default_collate(list(imgs))
    return torch.from_numpy(np.stack([im.numpy() for im in imgs]))
