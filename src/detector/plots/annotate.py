"""Detections drawn onto an image: a box per detection with its class name and confidence (OpenCV drawing)."""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from detector.plots.batches import class_colour


def annotate(im: np.ndarray, det: np.ndarray, names: Mapping[int, str], line_width: int | None = None) -> np.ndarray:
    """A copy of BGR ``im`` with ``(n, 6)`` ``[x1, y1, x2, y2, conf, cls]`` detections drawn; the line width
    follows the image size unless given (YOLOv5: about 0.3 % of its sides)."""
    out = np.ascontiguousarray(im).copy()
    lw = line_width or max(round(sum(out.shape[:2]) / 2 * 0.003), 2)
    font = lw / 3
    for x1, y1, x2, y2, conf, cls in np.asarray(det, dtype=np.float64).reshape(-1, 6):
        c = int(cls)
        colour = class_colour(c)
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, colour, lw, cv2.LINE_AA)
        text = f"{names.get(c, str(c))} {conf:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, max(lw - 1, 1))
        above = p1[1] - th - 3 >= 0
        q = (p1[0] + tw, p1[1] - th - 3 if above else p1[1] + th + 3)
        cv2.rectangle(out, p1, q, colour, -1, cv2.LINE_AA)
        ty = p1[1] - 2 if above else p1[1] + th + 2
        cv2.putText(out, text, (p1[0], ty), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), max(lw - 1, 1),
                    cv2.LINE_AA)  # fmt: skip
    return out
