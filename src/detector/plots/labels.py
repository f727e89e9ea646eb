"""labels.jpg: class counts, box shapes, box centres and box sizes of a dataset's labels (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detector.plots.batches import PALETTE


def _rgb(c: int) -> tuple[float, float, float]:
    b, g, r = PALETTE[c % len(PALETTE)]
    return r / 255, g / 255, b / 255


def plot_labels(
    labels: np.ndarray, names: Mapping[int, str] | None, save_dir: str | Path, max_boxes: int = 1000
) -> Path:
    """Save ``save_dir/labels.jpg`` for labels (n, 5) ``[cls, x, y, w, h]`` normalised; returns its path."""
    labels = np.asarray(labels, np.float64).reshape(-1, 5)
    names = dict(names or {})
    nc = max(len(names), int(labels[:, 0].max()) + 1 if len(labels) else 1)
    cls, xywh = labels[:, 0].astype(int), labels[:, 1:]

    fig = Figure(figsize=(8, 8), tight_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, 2).ravel()

    counts = np.bincount(cls, minlength=nc)
    ax[0].bar(range(nc), counts, color=[_rgb(c) for c in range(nc)])
    ax[0].set_ylabel("instances")
    if nc <= 30:
        ax[0].set_xticks(range(nc))
        ax[0].set_xticklabels([names.get(c, str(c)) for c in range(nc)], rotation=90, fontsize=8)
    else:
        ax[0].set_xlabel("classes")

    # box shapes, all centred, on a unit canvas
    pick = np.random.default_rng(0).permutation(len(labels))[:max_boxes]
    for c, (_, _, w, h) in zip(cls[pick], xywh[pick], strict=True):
        ax[1].add_patch(_rect(0.5 - w / 2, 0.5 - h / 2, w, h, _rgb(c)))
    ax[1].set(xlim=(0, 1), ylim=(1, 0), aspect="equal", title="box shapes (centred)")
    ax[1].set_xticks([])
    ax[1].set_yticks([])

    for a, (i, j), lab in ((ax[2], (0, 1), ("x", "y")), (ax[3], (2, 3), ("width", "height"))):
        if len(labels):
            a.hist2d(xywh[:, i], xywh[:, j], bins=50, range=[[0, 1], [0, 1]], cmap="Blues", cmin=1)
        a.set(xlim=(0, 1), ylim=(0, 1), xlabel=lab[0], ylabel=lab[1])
    ax[2].invert_yaxis()

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / "labels.jpg"
    fig.savefig(path, dpi=150)
    return path


def _rect(x, y, w, h, colour):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=0.5, alpha=0.5)
