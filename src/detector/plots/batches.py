"""A batch of images as one JPEG grid, with label or prediction boxes and class names (OpenCV drawing)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from detector.boxes import xywh2xyxy

# tab10 + a few more, as BGR; class c uses PALETTE[c % len(PALETTE)]
_HEX = ("1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf "
        "ff3838 2c99a8 00c2ff 344593 6473ff 0018ec 8438ff 520085 cb38ff ff95c8").split()  # fmt: skip
PALETTE = [(int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in _HEX]


def class_colour(c: int) -> tuple[int, int, int]:
    """BGR colour of class c."""
    return PALETTE[int(c) % len(PALETTE)]


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_images(
    imgs: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    paths: Sequence[str] | None = None,
    names: Mapping[int, str] | None = None,
    fname: str | Path = "images.jpg",
    max_size: int = 1920,
    max_subplots: int = 16,
    conf_thres: float = 0.25,
) -> Path:
    """Save up to ``max_subplots`` images (B, 3, H, W) RGB (uint8, or float in [0, 1]) as a grid JPEG.

    ``targets`` rows are ``[img_idx, cls, x, y, w, h]`` (labels; normalised or pixels) or
    ``[img_idx, cls, x, y, w, h, conf]`` (predictions, drawn when conf > conf_thres, with the score).
    """
    imgs, targets = _numpy(imgs), _numpy(targets)
    targets = targets.reshape(-1, targets.shape[-1]) if targets.size else np.zeros((0, 6))
    if imgs.dtype != np.uint8:
        imgs = (imgs * 255 if imgs.max() <= 1 else imgs).clip(0, 255).astype(np.uint8)
    bs = min(len(imgs), max_subplots)
    h, w = imgs.shape[2:]
    ns = math.ceil(bs**0.5)
    scale = min(1.0, max_size / (ns * max(h, w)))
    th, tw = math.ceil(h * scale), math.ceil(w * scale)
    grid = np.full((ns * th, ns * tw, 3), 255, np.uint8)
    lw = max(1, round(min(th, tw) / 200))
    font = max(0.3, min(th, tw) / 600)
    for i in range(bs):
        y0, x0 = (i // ns) * th, (i % ns) * tw
        tile = cv2.cvtColor(np.ascontiguousarray(imgs[i].transpose(1, 2, 0)), cv2.COLOR_RGB2BGR)
        if scale < 1:
            tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
        grid[y0 : y0 + th, x0 : x0 + tw] = tile
        _draw_targets(grid, targets[targets[:, 0] == i], (x0, y0), (tw, th), scale, names, lw, font, conf_thres)
        cv2.rectangle(grid, (x0, y0), (x0 + tw - 1, y0 + th - 1), (255, 255, 255), lw)
        if paths is not None and i < len(paths):
            cv2.putText(grid, Path(paths[i]).name[:40], (x0 + 3, y0 + int(14 * font / 0.5)),
                        cv2.FONT_HERSHEY_SIMPLEX, font, (220, 220, 220), 1, cv2.LINE_AA)  # fmt: skip
    fname = Path(fname)
    fname.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(fname), grid, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return fname


def _draw_targets(grid, t, offset, size, scale, names, lw, font, conf_thres) -> None:
    if not len(t):
        return
    boxes = xywh2xyxy(t[:, 2:6].astype(np.float64))
    if boxes.max() <= 1.01:  # normalised
        boxes[:, [0, 2]] *= size[0]
        boxes[:, [1, 3]] *= size[1]
    else:
        boxes *= scale
    boxes[:, [0, 2]] += offset[0]
    boxes[:, [1, 3]] += offset[1]
    conf = t[:, 6] if t.shape[1] > 6 else None
    for j, (x1, y1, x2, y2) in enumerate(boxes.round().astype(int)):
        if conf is not None and conf[j] <= conf_thres:
            continue
        c = int(t[j, 1])
        colour = class_colour(c)
        cv2.rectangle(grid, (x1, y1), (x2, y2), colour, lw)
        text = names.get(c, str(c)) if names else str(c)
        if conf is not None:
            text = f"{text} {conf[j]:.1f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = y1 - 2 if y1 - th - 4 >= offset[1] else y1 + th + 2
        cv2.rectangle(grid, (x1, ty - th - 2), (x1 + tw + 2, ty + 2), colour, -1)
        cv2.putText(grid, text, (x1 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
