"""Letterboxing: resize to fit and pad to a stride multiple, the geometry both data paths share."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_GREY = 114  # YOLOv5's padding grey, everywhere an image is padded
PAD_COLOR = (PAD_GREY, PAD_GREY, PAD_GREY)


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where letterbox puts an image: scale (rw, rh), resized size (w, h), padding (dw, dh) per side as floats
    (YOLOv5's labels use these) and the integer borders (top, bottom, left, right). Names say the order."""

    ratio_wh: tuple[float, float]
    unpad_wh: tuple[int, int]
    pad_wh: tuple[float, float]
    borders: tuple[int, int, int, int]


def letterbox_geometry(
    hw: tuple[int, int],
    new_shape: int | tuple[int, int] = 640,
    auto: bool = False,
    scale_fill: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> LetterboxGeometry:
    """The geometry ``letterbox`` uses for an image of size ``hw`` (h, w); see ``letterbox``."""
    h, w = hw
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(new_h / h, new_w / w)
    if not scaleup:
        r = min(r, 1.0)
    ratio = (r, r)
    unpad_w, unpad_h = round(w * r), round(h * r)
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    elif scale_fill:
        dw, dh = 0, 0
        unpad_w, unpad_h = new_w, new_h
        ratio = (new_w / w, new_h / h)
    dw, dh = dw / 2, dh / 2
    borders = (round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1))
    return LetterboxGeometry(ratio, (unpad_w, unpad_h), (dw, dh), borders)


def letterbox(
    im: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: tuple[int, int, int] = PAD_COLOR,
    auto: bool = False,
    scale_fill: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to ``new_shape`` (h, w); returns (image, (rw, rh), (dw, dh)).

    ``auto`` pads only up to a multiple of ``stride``; ``scale_fill`` stretches without padding; without
    ``scaleup`` images are only shrunk. The result is always a new array.
    """
    g = letterbox_geometry(im.shape[:2], new_shape, auto, scale_fill, scaleup, stride)
    if im.shape[1::-1] != g.unpad_wh:
        im = cv2.resize(im, g.unpad_wh, interpolation=cv2.INTER_LINEAR)
    im = cv2.copyMakeBorder(im, *g.borders, cv2.BORDER_CONSTANT, value=color)
    return im, g.ratio_wh, g.pad_wh
