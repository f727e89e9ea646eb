"""The sample recipe: which augmentations one sample gets, in YOLOv5's order, as a pure function of
(seed, epoch, index): every draw comes from one generator seeded by those three numbers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from detector.boxes import xyxy2xywhn
from detector.data.albumentations_extras import AlbumentationsExtras
from detector.data.augment import flip_lr, flip_ud, mixup
from detector.data.geometry import Warp, draw_warp
from detector.data.photometric import augment_hsv
from detector.data.rendering import Rendered, Rendering, render_letterboxed, render_mosaic
from detector.data.source import ImageSource

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


@dataclass(frozen=True)
class SampleRecipe:
    """YOLOv5's training sample (mosaic with probability ``hyp.mosaic``, then mixup; else a letterboxed image;
    random_perspective; albumentations extras; HSV; flips) or, without ``augment``, a plain letterbox.

    ``mosaic`` says whether mosaic may run at all (augmenting and not rect); it stops for the last
    ``close_mosaic`` of ``epochs``.
    """

    imgsz: int
    augment: bool
    mosaic: bool
    epochs: int
    close_mosaic: int
    hyp: Mapping[str, float]
    rendering: Rendering
    albumentations: AlbumentationsExtras | None

    def __post_init__(self) -> None:
        missing = [k for k in AUGMENT_HYP_KEYS if k not in self.hyp]
        if self.augment and missing:
            raise KeyError(f"hyp is missing augmentation keys {missing} (YOLOv5 hyp files define all of them)")

    def warn_unusable(self, source: ImageSource) -> None:
        """Log the augmentations this dataset cannot have (copy-paste without polygon labels)."""
        if self.augment and self.hyp["copy_paste"] > 0 and not source.has_polygons:
            p = self.hyp["copy_paste"]
            log.warning("copy_paste=%s needs polygon labels; this dataset has boxes only: skipped", p)

    def mosaic_active(self, epoch: int) -> bool:
        """Whether mosaic may run at this epoch: allowed, and before the last close_mosaic epochs."""
        return self.mosaic and not (self.close_mosaic > 0 and epoch >= self.epochs - self.close_mosaic)

    def __call__(self, source: ImageSource, seed: int, epoch: int, index: int, canvas: tuple[int, int]) -> Rendered:
        """Sample ``index`` of ``epoch``: (index used, BGR image, (n, 5) ``[cls, x, y, w, h]`` normalised labels,
        letterbox info). ``canvas`` is (imgsz, imgsz) or the rect batch's (h, w)."""
        rng = np.random.default_rng([seed, epoch, index])
        hyp = self.hyp
        if self.mosaic_active(epoch) and rng.random() < hyp["mosaic"]:
            img, labels = self._mosaic(source, index, rng)
            if rng.random() < hyp["mixup"]:
                img2, labels2 = self._mosaic(source, int(rng.integers(source.n)), rng)
                img, labels = mixup(img, labels, img2, labels2, rng, self.rendering.mixup_beta)
            info = None
        else:
            warp = self.warp_for(canvas, rng) if self.augment else None
            index, img, labels, info = render_letterboxed(source, self.rendering, index, canvas, warp)

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
        return index, img, labels, info

    def _mosaic(self, source: ImageSource, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.imgsz
        warp = self.warp_for((2 * s, 2 * s), rng, border=(-s // 2, -s // 2))
        return render_mosaic(source, self.rendering, index, s, rng, warp, self.hyp["copy_paste"])

    def warp_for(self, canvas: tuple[int, int], rng: np.random.Generator, border: tuple[int, int] = (0, 0)) -> Warp:
        """random_perspective's draws for an image of ``canvas`` (h, w) (a mosaic: 2 imgsz, cropped by border)."""
        gains = {k: self.hyp[k] for k in ("degrees", "translate", "scale", "shear", "perspective")}
        return draw_warp(canvas, rng, **gains, border=border)
