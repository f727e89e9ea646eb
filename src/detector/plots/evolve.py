"""evolve.png: every evolved hyp's value against fitness over an evolution's children, the best one marked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detector.evolve.genetic import fitness
from detector.evolve.history import RESULT_KEYS, read_csv


def plot_evolve(csv: str | Path, fitness_weights: Sequence[float], out: str | Path | None = None) -> Path:
    """One scatter per hyp column of ``csv`` (coloured by point density), the best child as a black cross;
    writes ``out`` (default evolve.png beside the csv) and returns its path."""
    csv = Path(csv)
    keys, values = read_csv(csv)
    if not len(values):
        raise ValueError(f"{csv} has no children yet")
    fit = fitness(values, fitness_weights)
    best = int(np.argmax(fit))
    hyp_keys = keys[len(RESULT_KEYS) :]
    cols = 5
    rows = math.ceil(len(hyp_keys) / cols)
    fig = Figure(figsize=(10, 2 * rows), tight_layout=True)
    FigureCanvasAgg(fig)
    for i, key in enumerate(hyp_keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        x = values[:, len(RESULT_KEYS) + i]
        ax.scatter(x, fit, c=_density(x, fit), cmap="viridis", s=10, alpha=0.8, edgecolors="none")
        ax.plot(x[best], fit[best], "k+", markersize=15)
        ax.set_title(f"{key} = {x[best]:.3g}", fontsize=9)
        ax.tick_params(labelsize=7)
        if i % cols:
            ax.set_yticklabels([])
    path = Path(out) if out is not None else csv.with_name("evolve.png")
    fig.savefig(path, dpi=200)
    return path


def _density(x: np.ndarray, y: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each point's count in a 2-D histogram of (x, y): denser regions get brighter colours."""
    if len(x) < 2:
        return np.ones(len(x))
    hist, xe, ye = np.histogram2d(x, y, bins)
    ix = np.clip(np.digitize(x, xe[1:-1]), 0, bins - 1)
    iy = np.clip(np.digitize(y, ye[1:-1]), 0, bins - 1)
    return hist[ix, iy]
