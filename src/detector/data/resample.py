"""One-pass rendering of an image that stands on a canvas as an (h, w) tile and is then moved by an axis-aligned
warp (scale and translation: every YOLOv5 hyp file, whose degrees, shear and perspective are 0).

Own code, for speed: YOLOv5 resizes each image to the training size, pastes it on a canvas and warps the whole
canvas. Here each decoded image is resampled once, straight into the output pixels it covers, with cv2.resize
on just the needed crop (3-4x faster per pixel than warpAffine). Tile edges land on the same pixels; the pixels
differ only by interpolation (one resampling instead of two).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from detector.data.geometry import Warp

Rect = tuple[int, int, int, int]


def output_rect(ox: int, oy: int, w: int, h: int, canvas: tuple[int, int], warp: Warp) -> Rect | None:
    """Output pixels (u1, v1, u2, v2) whose nearest canvas pixel lies on the w x h tile at (ox, oy), the tile
    cropped to the canvas (width, height); None when the output does not show the tile."""
    x1, y1, x2, y2 = max(ox, 0), max(oy, 0), min(ox + w, canvas[0]), min(oy + h, canvas[1])
    (ax, _, tx), (_, ay, ty) = warp.M[:2]
    width, height = warp.size
    u1, u2 = (min(max(math.ceil(ax * (x - 0.5) + tx), 0), width) for x in (x1, x2))
    v1, v2 = (min(max(math.ceil(ay * (y - 0.5) + ty), 0), height) for y in (y1, y2))
    return (u1, v1, u2, v2) if u2 > u1 and v2 > v1 else None


def draw_tile(
    out: np.ndarray,
    im: np.ndarray,
    ox: int,
    oy: int,
    w: int,
    h: int,
    rect: Rect,
    warp: Warp,
    extent: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Write ``rect`` of ``out`` with the decoded image ``im`` (any size: its ``extent`` (w, h) in decoded pixels,
    default its whole array, is stretched to the w x h tile at (ox, oy) on the canvas) as ``warp`` shows it.

    Returns how far (dx, dy) the tile's pixels landed from where the warp puts them, in canvas pixels (under half
    an output pixel); moving the tile's labels by it keeps them on their pixels as exactly as YOLOv5's path.
    """
    if not warp.axis_aligned:
        raise ValueError("one-pass rendering needs a warp without rotation, shear or perspective")
    (ax, _, tx), (_, ay, ty) = warp.M[:2]
    # output pixel u -> canvas x = (u - tx) / ax -> tile pixel x - ox -> decoded pixel (as cv2.resize maps)
    ew, eh = extent if extent is not None else (im.shape[1], im.shape[0])
    rx, ry = w / ew, h / eh
    kx, cx = 1 / (ax * rx), ((-tx) / ax - ox + 0.5) / rx - 0.5
    ky, cy = 1 / (ay * ry), ((-ty) / ay - oy + 0.5) / ry - 0.5
    u1, v1, u2, v2 = rect
    out[v1:v2, u1:u2], (sx, sy) = _resample(im, u1, u2 - u1, kx, cx, v1, v2 - v1, ky, cy)
    return sx / ax, sy / ay


def _span(start: int, size: int, k: float, c: float, length: int) -> tuple[int, int, int, float]:
    """Source span (p1, p2) covering decoded coordinates k * u + c for u in [start, start + size), with a margin
    for the interpolation footprint; the first output index j0 of that span once resized by 1 / k; and how far
    the resized pixels land from the exact positions, in output pixels (the rounding of j0)."""
    x_first = k * start + c
    margin = 2 + int(k)
    p1 = min(max(math.floor(x_first) - margin, 0), length - 1)
    p2 = min(max(math.ceil(x_first + k * (size - 1)) + margin, p1 + 1), length)
    j0 = max(round((x_first - p1 + 0.5) / k - 0.5), 0)
    return p1, p2, j0, (x_first - p1 + 0.5) / k - 0.5 - j0


def _resample(
    im: np.ndarray, u1: int, du: int, kx: float, cx: float, v1: int, dv: int, ky: float, cy: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """The (dv, du) block of output pixels (u, v) for u >= u1, v >= v1 that sample ``im`` bilinearly at
    (kx * u + cx, ky * v + cy), edges replicated, to within half an output pixel; and the offset (dx, dy) in
    output pixels of the content from those exact positions.

    cv2.resize with exact scale factors on the needed crop: 3-4x faster per pixel than warpAffine.
    """
    px1, px2, jx, sx = _span(u1, du, kx, cx, im.shape[1])
    py1, py2, jy, sy = _span(v1, dv, ky, cy, im.shape[0])
    if (px2 - px1) / kx < 2 or (py2 - py1) / ky < 2:  # a sliver: resize would round its size to nothing
        inv = np.array([[kx, 0, kx * u1 + cx], [0, ky, ky * v1 + cy]])
        block = cv2.warpAffine(im, inv, (du, dv), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        return block, (0.0, 0.0)
    # Shrinking more than 2x, area averaging keeps fine texture from aliasing (YOLOv5's two bilinear steps
    # alias there too, less); otherwise bilinear like YOLOv5.
    interp = cv2.INTER_AREA if max(kx, ky) > 2 else cv2.INTER_LINEAR
    big = cv2.resize(im[py1:py2, px1:px2], None, fx=1 / kx, fy=1 / ky, interpolation=interp)
    short_y, short_x = jy + dv - big.shape[0], jx + du - big.shape[1]
    if short_y > 0 or short_x > 0:  # rounding at the image edge: replicate the last row or column
        big = cv2.copyMakeBorder(big, 0, max(short_y, 0), 0, max(short_x, 0), cv2.BORDER_REPLICATE)
    return big[jy : jy + dv, jx : jx + du], (sx, sy)
