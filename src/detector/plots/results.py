"""results.png: the losses and metrics of every epoch of a run, from its results.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.ndimage import gaussian_filter1d

# YOLOv5's panels, two rows of five: training losses, P and R; validation losses, mAPs
PANELS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
          "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")  # fmt: skip


def plot_results(rows: list[dict[str, float]], path: str | Path) -> Path:
    """One panel per column of ``rows`` (results.csv read back): the values per epoch as dots and a line, with a
    smoothed dotted line when there are enough epochs. Columns missing from the rows are left out."""
    path = Path(path)
    fig = Figure(figsize=(12, 6), tight_layout=True)
    FigureCanvasAgg(fig)  # Figure/Agg directly: no pyplot backend or figure registry
    axes = fig.subplots(2, 5).ravel()
    epochs = np.array([r["epoch"] for r in rows])
    for ax, key in zip(axes, PANELS, strict=True):
        ax.set_title(key, fontsize=11)
        y = np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)
        if not np.isfinite(y).any():
            continue
        ax.plot(epochs, y, marker=".", linewidth=2, markersize=8, label="results")
        if len(y) >= 5 and np.isfinite(y).all():
            ax.plot(epochs, gaussian_filter1d(y, sigma=3), ":", linewidth=2, label="smooth")
    axes[0].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path
