"""Mosaic placement: 4 (or 9) training images tiled on a grey canvas with their labels moved along.

Own code: albumentations has no multi-image mosaic. The result is a 2s x 2s canvas; the dataset then applies
copy-paste and the ``random_perspective`` warp with border ``(-s // 2, -s // 2)``, which crops it to s x s as
YOLOv5 does. The canvas is BGRA (alpha unused): OpenCV warps 4-channel images faster, with identical colour
values. ``mosaic4`` can fill only the part of the canvas that the warp reads (``roi``; the rest is left
uninitialised): the same output pixels for a third of the filling and copying on average.

``mosaic4_warped`` is the fast path for the usual warp without rotation, shear or perspective (every YOLOv5 hyp
file): the same layout and labels, with the image rendered straight into the s x s output.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from detector.boxes import xywhn2xyxy
from detector.data.geometry import Warp
from detector.data.letterbox import PAD_GREY
from detector.data.resample import draw_tile, output_rect

# load(i) -> (image resized to long side s, labels (n, 5) [cls, x, y, w, h] normalised, polygons normalised)
Loader = Callable[[int], tuple[np.ndarray, np.ndarray, list[np.ndarray]]]
# describe(i) -> (image i's (h, w) on the canvas, its labels, its polygons), without decoding it
TileInfo = Callable[[int], tuple[tuple[int, int], np.ndarray, list[np.ndarray]]]
# load(i, zoom) -> (image i decoded at zoom times its canvas size or more, e.g. a JPEG at 1/2 of its pixels when
# zoom is 0.4; the index of the image returned, another one when image i cannot be read; the (w, h) extent of the
# image's content in decoded pixels)
TileLoader = Callable[[int, float], tuple[np.ndarray, int, tuple[float, float]]]
Mosaic = tuple[np.ndarray, np.ndarray, list[np.ndarray]]


def _paste(
    canvas: np.ndarray, im: np.ndarray, ox: int, oy: int, clip: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """Copy BGR im into the BGRA canvas with its top-left corner at (ox, oy), cropped to ``clip`` (x1, y1, x2, y2).

    Returns the canvas rectangle written; converting straight into the canvas saves a copy.
    """
    h, w = im.shape[:2]
    x1, y1, x2, y2 = max(ox, clip[0]), max(oy, clip[1]), min(ox + w, clip[2]), min(oy + h, clip[3])
    if x2 > x1 and y2 > y1:
        src = im[y1 - oy : y2 - oy, x1 - ox : x2 - ox]
        if im.shape[2] == 3:
            cv2.cvtColor(src, cv2.COLOR_BGR2BGRA, dst=canvas[y1:y2, x1:x2])
        else:
            canvas[y1:y2, x1:x2] = src
    return x1, y1, max(x1, x2), max(y1, y2)


def _fill_around(
    canvas: np.ndarray,
    region: tuple[int, int, int, int],
    tile: tuple[int, int, int, int],
    clip: tuple[int, int, int, int],
) -> None:
    """Fill region (x1, y1, x2, y2) of the canvas, cropped to ``clip``, with grey 114 except where the tile
    rectangle is."""
    rx1, ry1 = max(region[0], clip[0]), max(region[1], clip[1])
    rx2, ry2 = min(region[2], clip[2]), min(region[3], clip[3])
    if rx2 <= rx1 or ry2 <= ry1:
        return
    tx1, tx2 = min(max(tile[0], rx1), rx2), min(max(tile[2], rx1), rx2)
    ty1, ty2 = min(max(tile[1], ry1), ry2), min(max(tile[3], ry1), ry2)
    if tx2 <= tx1 or ty2 <= ty1:  # the tile misses the region
        tx1 = tx2 = rx1
        ty1 = ty2 = ry1
    canvas[ry1:ty1, rx1:rx2] = PAD_GREY  # above
    canvas[ty2:ry2, rx1:rx2] = PAD_GREY  # below
    canvas[ty1:ty2, rx1:tx1] = PAD_GREY  # left
    canvas[ty1:ty2, tx2:rx2] = PAD_GREY  # right


def _place(
    canvas: np.ndarray,
    im: np.ndarray,
    labels: np.ndarray,
    segments: list[np.ndarray],
    ox: int,
    oy: int,
    clip: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], tuple[int, int, int, int]]:
    """Paste one image at (ox, oy) (cropped to ``clip``, default the canvas); return its labels as pixel xyxy,
    its polygons in pixels and the canvas rectangle written."""
    rect = _paste(canvas, im, ox, oy, clip or (0, 0, canvas.shape[1], canvas.shape[0]))
    h, w = im.shape[:2]
    out = labels.astype(np.float32, copy=True)
    if len(out):
        out[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, ox, oy)
    return out, [s * (w, h) + (ox, oy) for s in segments], rect


def _finish(labels: list[np.ndarray], segments: list[np.ndarray], size: int) -> tuple[np.ndarray, list]:
    out = np.concatenate(labels, 0) if labels else np.zeros((0, 5), np.float32)
    out[:, 1:] = out[:, 1:].clip(0, size)
    return out, [s.clip(0, size) for s in segments]


def _layout(index: int, n: int, s: int, rng: np.random.Generator) -> tuple[int, int, list[int]]:
    """Mosaic centre (xc, yc) drawn from [s/2, 3s/2) of the 2s canvas, and image ``index`` with 3 random others."""
    lo = -((-s) // 2)  # the centre is drawn from U(-border, 2s + border) with YOLOv5's border -s // 2
    xc, yc = int(rng.uniform(lo, 2 * s - lo)), int(rng.uniform(lo, 2 * s - lo))
    indices = [index, *rng.integers(0, n, 3).tolist()]
    rng.shuffle(indices)
    return xc, yc, indices


def _corner(k: int, xc: int, yc: int, w: int, h: int) -> tuple[int, int, bool, bool]:
    """Top-left (ox, oy) of tile k of size (w, h) around the centre: 0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right; also whether it is a left and a top tile."""
    left, top = k in (0, 2), k in (0, 1)
    return (xc - w if left else xc), (yc - h if top else yc), left, top


def mosaic4(
    load: Loader, index: int, n: int, s: int, rng: np.random.Generator, roi: tuple[int, int, int, int] | None = None
) -> Mosaic:
    """Image ``index`` and 3 random others (shuffled) around a random centre in [s/2, 3s/2) of a 2s canvas.

    Returns (BGRA canvas 2s x 2s, labels (m, 5) [cls, x1, y1, x2, y2] in canvas pixels clipped to [0, 2s],
    polygons). With ``roi`` (x1, y1, x2, y2) only that part of the canvas is filled; the rest is uninitialised.
    """
    xc, yc, indices = _layout(index, n, s, rng)
    clip = roi if roi is not None else (0, 0, 2 * s, 2 * s)
    canvas = np.empty((2 * s, 2 * s, 4), np.uint8)  # grey is filled around the tiles only
    labels, segments = [], []
    for k, i in enumerate(indices):
        im, lab, segs = load(i)
        h, w = im.shape[:2]
        ox, oy, left, top = _corner(k, xc, yc, w, h)
        lab, segs, rect = _place(canvas, im, lab, segs, ox, oy, clip)
        quadrant = (0 if left else xc, 0 if top else yc, xc if left else 2 * s, yc if top else 2 * s)
        _fill_around(canvas, quadrant, rect, clip)
        labels.append(lab)
        segments += segs
    return (canvas, *_finish(labels, segments, 2 * s))


def mosaic4_warped(
    describe: TileInfo, load: TileLoader, index: int, n: int, s: int, rng: np.random.Generator, warp: Warp
) -> Mosaic:
    """``mosaic4`` followed by an axis-aligned ``warp`` (scale and translation only), rendered in one pass.

    Same draws, tile layout and labels as ``mosaic4`` (labels in 2s-canvas pixels, still to be warped with
    ``warp_targets``), but the image is the warped s x s BGR output: each tile is resampled once, straight from
    its decoded image into the output rectangle it covers, and a tile the output does not show is not decoded.
    Own code, for speed: it skips the resize to the training size, the 2s canvas and the full warp. Pixels
    differ from the two-step path only by interpolation (one resampling instead of two) and tiles land within
    half an output pixel of it; each tile's labels move with its pixels.
    """
    if not warp.axis_aligned:
        raise ValueError("mosaic4_warped needs a warp without rotation, shear or perspective")
    xc, yc, indices = _layout(index, n, s, rng)
    width, height = warp.size
    out = np.full((height, width, 3), PAD_GREY, np.uint8)
    labels, segments = [], []
    for k, i in enumerate(indices):
        (h, w), lab, segs = describe(i)
        ox, oy, _, _ = _corner(k, xc, yc, w, h)
        rect = output_rect(ox, oy, w, h, (2 * s, 2 * s), warp)
        dx = dy = 0.0
        if rect is not None:
            im, j, extent = load(i, warp.M[0, 0])
            if j != i:  # image i is unreadable and image j stands in for it
                (h, w), lab, segs = describe(j)
                ox, oy, _, _ = _corner(k, xc, yc, w, h)
                rect = output_rect(ox, oy, w, h, (2 * s, 2 * s), warp)
            if rect is not None:
                dx, dy = draw_tile(out, im, ox, oy, w, h, rect, warp, extent)
        out_lab = lab.astype(np.float32, copy=True)
        if len(out_lab):  # labels follow the pixels' sub-pixel landing offset (dx, dy)
            out_lab[:, 1:] = xywhn2xyxy(lab[:, 1:], w, h, ox + dx, oy + dy)
        labels.append(out_lab)
        segments += [sg * (w, h) + (ox + dx, oy + dy) for sg in segs]
    return (out, *_finish(labels, segments, 2 * s))


def mosaic9(load: Loader, index: int, n: int, s: int, rng: np.random.Generator) -> Mosaic:
    """Image ``index`` and 8 random others (shuffled) on a 3 x 3 grid of s-cells, then a random 2s x 2s crop.

    Own arrangement (YOLOv5's load_mosaic9 is never called): each image sits in its cell pushed towards the
    centre cell, so tiles never overlap and every label stays on its pixels.
    """
    indices = [index, *rng.integers(0, n, 8).tolist()]
    rng.shuffle(indices)
    canvas = np.full((3 * s, 3 * s, 4), PAD_GREY, np.uint8)
    labels, segments = [], []
    for k, i in enumerate(indices):
        im, lab, segs = load(i)
        h, w = im.shape[:2]
        row, col = divmod((k + 4) % 9, 3)  # the first image goes to the centre cell
        ox = col * s + (s - w if col == 0 else (s - w) // 2 if col == 1 else 0)
        oy = row * s + (s - h if row == 0 else (s - h) // 2 if row == 1 else 0)
        lab, segs, _ = _place(canvas, im, lab, segs, ox, oy)
        labels.append(lab)
        segments += segs
    x0, y0 = int(rng.uniform(0, s)), int(rng.uniform(0, s))
    canvas = canvas[y0 : y0 + 2 * s, x0 : x0 + 2 * s]
    for lab in labels:
        lab[:, [1, 3]] -= x0
        lab[:, [2, 4]] -= y0
    segments = [seg - (x0, y0) for seg in segments]
    return (np.ascontiguousarray(canvas), *_finish(labels, segments, 2 * s))
