"""Rendering one sample's pixels and pixel-space labels: a letterboxed image or a mosaic, then its warp.

Two paths give the same picture: YOLOv5's (resize, canvas, warp: two bilinear passes) and, with ``one_pass``,
axis-aligned warps rendered straight from the decoded file (see resample). ``Rendering.one_pass_for`` is the one
rule choosing between them. The random draws are the caller's (see recipe); only mosaic's tile picks and
copy-paste draw from the generator passed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.boxes import xywhn2xyxy
from detector.data.augment import copy_paste
from detector.data.geometry import Warp, apply_warp, source_roi, warp_targets
from detector.data.letterbox import PAD_GREY, LetterboxGeometry, letterbox, letterbox_geometry
from detector.data.mosaic import mosaic4, mosaic4_warped, mosaic9
from detector.data.resample import draw_tile, output_rect
from detector.data.source import ImageSource

BOX_KEYS = ("wh_thr", "ar_thr", "area_thr", "area_thr_segments")  # warp_targets' box-candidate thresholds
RENDERING_KEYS = ("mosaic9", "one_pass", "reduced_decoding", "pixel_centres", "mixup_beta", *BOX_KEYS)
# What maps predictions back onto the original image: ((h0, w0), ((h / h0, w / w0), (pad_w, pad_h))), YOLOv5's
# layout; None for mosaics, which have no original.
LetterboxInfo = tuple[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]] | None
Rendered = tuple[int, np.ndarray, np.ndarray, LetterboxInfo]  # (index used, BGR image, (n, 5) pixel xyxy, info)


@dataclass(frozen=True)
class Rendering:
    """conf/augment's rendering settings (its keys in ``RENDERING_KEYS``; no defaults here, the config owns them).

    ``pixel_centres`` moves labels as OpenCV moves pixels (see warp_targets) and by the rounded letterbox padding;
    False keeps YOLOv5's labels. ``box`` holds warp_targets' box-candidate thresholds.
    """

    mosaic9: bool
    one_pass: bool
    reduced_decoding: bool
    pixel_centres: bool
    mixup_beta: float
    box: Mapping[str, float]

    @classmethod
    def from_conf(cls, node: Mapping[str, Any]) -> Rendering:
        missing = [k for k in RENDERING_KEYS if k not in node]
        if missing:
            raise KeyError(f"rendering settings (conf/augment) are missing {missing}")
        flags = {k: bool(node[k]) for k in ("mosaic9", "one_pass", "reduced_decoding", "pixel_centres")}
        return cls(**flags, mixup_beta=float(node["mixup_beta"]), box={k: float(node[k]) for k in BOX_KEYS})

    @property
    def box_args(self) -> dict[str, Any]:
        """warp_targets' keyword arguments."""
        return {**self.box, "pixel_centres": self.pixel_centres}

    def one_pass_for(self, warp: Warp, needs_canvas: bool) -> bool:
        """The one rule for the path: one-pass rendering when it is on, the warp is axis-aligned and nothing needs
        YOLOv5's canvas (mosaic9, copy-paste, or an identity warp that leaves a plain letterbox); else YOLOv5's."""
        return self.one_pass and warp.axis_aligned and not needs_canvas

    def label_pad(self, g: LetterboxGeometry) -> tuple[float, float]:
        """Where labels go on a letterboxed image: the rounded borders the pixels sit at (``pixel_centres``), or
        YOLOv5's unrounded (dw / 2, dh / 2)."""
        return (g.borders[2], g.borders[0]) if self.pixel_centres else g.pad_wh


def render_letterboxed(
    source: ImageSource, rendering: Rendering, index: int, canvas: tuple[int, int], warp: Warp | None
) -> Rendered:
    """Image ``index`` letterboxed to ``canvas`` (h, w) (imgsz square, or a rect batch's), then moved by ``warp``
    (random_perspective's draws; None when not augmenting, which also forbids upscaling, as YOLOv5's val)."""
    moves = warp is not None and bool((warp.M != np.eye(3)).any())
    if warp is not None and rendering.one_pass_for(warp, needs_canvas=not moves):
        return _letterboxed_one_pass(source, rendering, index, canvas, warp)
    scaleup = warp is not None
    index, img, (h0, w0), (hh, ww) = source.load(index)
    img, ratio, _ = letterbox(img, canvas, auto=False, scaleup=scaleup)
    pad = rendering.label_pad(letterbox_geometry((hh, ww), canvas, scaleup=scaleup))
    labels = source.labels[index].copy()
    if len(labels):
        labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * ww, ratio[1] * hh, pad[0], pad[1])
    if warp is not None:
        if moves:
            img = apply_warp(img, warp)
        labels = warp_targets(labels, (), warp, **rendering.box_args)
    return index, img, labels, ((h0, w0), ((hh / h0, ww / w0), pad))


def _letterboxed_one_pass(
    source: ImageSource, rendering: Rendering, index: int, canvas: tuple[int, int], warp: Warp
) -> Rendered:
    """render_letterboxed for an axis-aligned warp, in one pass from the decoded file (see resample)."""
    zoom = warp.M[0, 0] * letterbox_geometry(source.resized_hw(index), canvas).ratio_wh[0]
    img, j, extent = source.load_tile(index, zoom)
    hh, ww = source.resized_hw(j)
    g = letterbox_geometry((hh, ww), canvas)
    top, _, left, _ = g.borders
    out = np.full((*canvas, 3), PAD_GREY, np.uint8)
    rect = output_rect(left, top, *g.unpad_wh, canvas[::-1], warp)
    dx, dy = draw_tile(out, img, left, top, *g.unpad_wh, rect, warp, extent) if rect is not None else (0.0, 0.0)
    labels = source.labels[j].copy()
    pad = rendering.label_pad(g)
    if len(labels):  # labels follow the pixels' sub-pixel landing offset (dx, dy)
        labels[:, 1:] = xywhn2xyxy(labels[:, 1:], g.ratio_wh[0] * ww, g.ratio_wh[1] * hh, pad[0] + dx, pad[1] + dy)
    w0, h0 = (int(v) for v in source.sizes_wh[j])
    return j, out, warp_targets(labels, (), warp, **rendering.box_args), ((h0, w0), ((hh / h0, ww / w0), pad))


def render_mosaic(
    source: ImageSource, rendering: Rendering, index: int, imgsz: int, rng: np.random.Generator, warp: Warp,
    copy_paste_p: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Mosaic of image ``index`` and random others (picked from ``rng``), copy-paste, then ``warp``, which crops
    the 2 imgsz canvas to imgsz; returns the image and (n, 5) pixel-xyxy labels."""
    s = imgsz
    full = (copy_paste_p > 0 and source.has_polygons) or warp.perspective  # copy-paste mirrors the whole canvas
    if rendering.one_pass_for(warp, needs_canvas=rendering.mosaic9 or full):  # every YOLOv5 hyp file, mosaic4
        img, labels, segments = mosaic4_warped(source.tile_info, source.load_tile, index, source.n, s, rng, warp)
        return img, warp_targets(labels, segments, warp, **rendering.box_args)
    if rendering.mosaic9:
        img, labels, segments = mosaic9(source.load_for_mosaic, index, source.n, s, rng)
    else:  # fill only the canvas part the warp reads, unless copy-paste mirrors the whole canvas
        roi = None if full else source_roi(warp, (2 * s, 2 * s))
        img, labels, segments = mosaic4(source.load_for_mosaic, index, source.n, s, rng, roi)
    if copy_paste_p > 0 and len(segments) == len(labels):  # polygons for every label
        img, labels, segments = copy_paste(img, labels, segments, copy_paste_p, rng)
    img = apply_warp(img, warp)
    return img, warp_targets(labels, segments, warp, **rendering.box_args)
