"""A dataset's images and labels by index, with YOLOv5's stand-in rule for images that cannot be read."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np

from detector.data.image_cache import ImageLoader, long_side_size

log = logging.getLogger(__name__)


class ImageSource:
    """Images (through ``images``, an ImageLoader) with their labels, polygons and original sizes.

    ``labels``: per image an (n, 5) ``[cls, x, y, w, h]`` normalised array; ``segments``: per image a list of
    normalised (k, 2) polygons; ``sizes_wh``: (n, 2) original (w, h). An image that cannot be read is replaced by
    the next readable one (wrapping round), logged once per file; the methods return the index actually used.
    """

    def __init__(
        self,
        images: ImageLoader,
        labels: Sequence[np.ndarray],
        segments: Sequence[Sequence[np.ndarray]],
        sizes_wh: np.ndarray,
        *,
        imgsz: int,
        reduced_decoding: bool,
    ):
        self.images = images
        self.labels = list(labels)
        self.segments = list(segments)
        self.sizes_wh = sizes_wh
        self.imgsz = int(imgsz)
        self.reduced_decoding = bool(reduced_decoding)
        self.n = len(self.labels)
        self.has_polygons = any(self.segments)
        self._bad: set[int] = set()

    def resized_hw(self, i: int) -> tuple[int, int]:
        """(h, w) of image i resized to long side imgsz, known without decoding it."""
        w0, h0 = self.sizes_wh[i]
        return long_side_size(int(h0), int(w0), self.imgsz)

    def tile_info(self, i: int) -> tuple[tuple[int, int], np.ndarray, list[np.ndarray]]:
        """(resized (h, w), labels, polygons) of image i, without decoding it."""
        return self.resized_hw(i), self.labels[i], self.segments[i]

    def load(self, i: int) -> tuple[int, np.ndarray, tuple[int, int], tuple[int, int]]:
        """(index used, image resized to long side imgsz, original (h0, w0), resized (h, w))."""
        for j in self._readable(i):
            img, hw0, hw = self.images.load(j)
            if img is not None:
                return j, img, hw0, hw
            self._mark_bad(j)
        raise RuntimeError(f"none of the {self.n} images of the dataset can be read")

    def load_for_mosaic(self, i: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(resized image, labels, polygons) of image i or its stand-in."""
        j, img, _, _ = self.load(i)
        return img, self.labels[j], self.segments[j]

    def load_tile(self, i: int, zoom: float) -> tuple[np.ndarray, int, tuple[float, float]]:
        """Image i (or its stand-in) decoded at the smallest 1/2^k size (k <= 3, with ``reduced_decoding``) that is
        still at least ``zoom`` times its resized size; also the index used and the extent (w, h) of its content
        in decoded pixels."""
        for j in self._readable(i):
            w = self.resized_hw(j)[1]
            reduce, (w0, h0) = 1, self.sizes_wh[j]
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

    def _readable(self, i: int) -> Iterator[int]:
        """Indices from i onwards (wrapping round) not yet found unreadable."""
        for k in range(self.n):
            j = (i + k) % self.n
            if j not in self._bad:
                yield j

    def _mark_bad(self, j: int) -> None:
        self._bad.add(j)
        log.warning("cannot read image %s; using the next readable image in its place", self.images.im_files[j])
