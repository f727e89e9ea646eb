"""Image file helpers: the accepted formats, decoding to BGR, and the EXIF-corrected size."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
ORIENTATION_TAG = 0x0112
# EXIF orientations that swap width and height (5 transpose, 6 rotate 90 CW, 7 transverse, 8 rotate 90 CCW).
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of IMG_FORMATS as its extension (case-insensitive)."""
    return os.path.splitext(str(path))[1][1:].lower() in IMG_FORMATS


def read_image(path: str | Path, reduce: int = 1) -> np.ndarray | None:
    """Decode an image file to a BGR uint8 HWC array with EXIF orientation applied; None if unreadable.

    ``reduce`` 2, 4 or 8 decodes at that fraction of the size (JPEGs scale inside the decoder, several times
    faster; other formats are shrunk after decoding). Reads the bytes with numpy so that non-ASCII paths work
    on every platform.
    """
    flags = REDUCED_FLAGS.get(reduce)
    if flags is None:
        raise ValueError(f"reduce must be one of {sorted(REDUCED_FLAGS)}, got {reduce}")
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        log.debug("cannot read %s: %s", path, e)
        return None
    if buf.size == 0:
        return None
    im = cv2.imdecode(buf, flags)  # applies EXIF orientation, converts grey/16-bit to 8-bit BGR
    if im is None and buf.size > 4 and buf[0] == 0xFF and buf[1] == 0xD8 and not (buf[-2] == 0xFF and buf[-1] == 0xD9):
        # OpenCV 5 rejects a JPEG without its end marker; adding the marker in memory decodes what is there.
        im = cv2.imdecode(np.concatenate([buf, np.array([0xFF, 0xD9], np.uint8)]), flags)
    return im


def exif_orientation(pil_img: Image.Image) -> int:
    """The EXIF orientation tag of a PIL image (1 when absent or unreadable)."""
    try:
        return int(pil_img.getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # malformed EXIF blocks raise assorted errors inside PIL
        return 1


def exif_size(pil_img: Image.Image) -> tuple[int, int]:
    """(w, h) of a PIL image as displayed, i.e. swapped when the EXIF orientation rotates by 90 degrees."""
    w, h = pil_img.size
    if exif_orientation(pil_img) in SWAPPING_ORIENTATIONS:
        return h, w
    return w, h
