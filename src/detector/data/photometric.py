"""Pixel-only augmentations: YOLOv5's HSV jitter, and the BGRA -> BGR step of the fast-warp layout."""

from __future__ import annotations

import cv2
import numpy as np


def augment_hsv(
    im: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator, inplace: bool = False
) -> np.ndarray:
    """Random multiplicative hue/saturation/value gains through lookup tables; returns a BGR image.

    ``im`` is BGR or BGRA (alpha ignored). With all gains 0 the input is returned untouched. ``inplace`` reuses
    a BGR ``im`` for the result (a third faster than new arrays).
    Own code: YOLOv5 multiplies hue before the modulo 180; albumentations' HueSaturationValue shifts it.
    """
    if not (hgain or sgain or vgain):
        return im
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    x = np.arange(256, dtype=np.float64)
    lut = np.empty((256, 1, 3), np.uint8)
    lut[:, 0, 0] = (x * r[0]) % 180
    lut[:, 0, 1] = np.clip(x * r[1], 0, 255)
    lut[:, 0, 2] = np.clip(x * r[2], 0, 255)
    if inplace and im.shape[2] == 3:
        cv2.cvtColor(im, cv2.COLOR_BGR2HSV, dst=im)
        cv2.LUT(im, lut, dst=im)
        return cv2.cvtColor(im, cv2.COLOR_HSV2BGR, dst=im)
    hsv = cv2.cvtColor(im, cv2.COLOR_BGR2HSV)  # accepts BGRA too
    cv2.LUT(hsv, lut, dst=hsv)  # one 3-channel LUT call instead of split/merge
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def to_bgr(im: np.ndarray) -> np.ndarray:
    """Drop the alpha channel of a BGRA image (the fast-warp layout); 3-channel images pass through."""
    return cv2.cvtColor(im, cv2.COLOR_BGRA2BGR) if im.shape[2] == 4 else im
