"""The pictures of a validation: PR_curve.png, F1_curve.png, P_curve.png, R_curve.png and confusion_matrix.png."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detector.metrics import APResult, smooth

MAX_LEGEND_CLASSES = 20  # above this many classes the per-class lines are drawn grey and unlabelled
MAX_ANNOTATED_CLASSES = 30  # confusion-matrix cells carry their values up to this many classes


def _figure(size: tuple[float, float] = (9, 6)) -> Figure:
    fig = Figure(figsize=size, tight_layout=True)
    FigureCanvasAgg(fig)  # Figure/Agg directly: no pyplot backend or figure registry
    return fig


def _name(names: Mapping[int, str], c: int) -> str:
    return str(names.get(int(c), int(c)))


def plot_pr_curve(res: APResult, names: Mapping[int, str], path: str | Path) -> Path:
    """Precision against recall at IoU 0.5 per class (AP@0.5 in the legend) and their mean."""
    fig = _figure()
    ax = fig.add_subplot()
    labelled = len(res.classes) <= MAX_LEGEND_CLASSES
    for i, c in enumerate(res.classes):
        kw = dict(label=f"{_name(names, c)} {res.ap[i, 0]:.3f}") if labelled else dict(color="grey")
        ax.plot(res.px, res.pr_curve[i], linewidth=1, **kw)
    if len(res.classes):
        ax.plot(res.px, res.pr_curve.mean(0), linewidth=3, color="blue",
                label=f"all classes {res.ap[:, 0].mean():.3f} mAP@0.5")  # fmt: skip
    _finish(ax, "Recall", "Precision", "Precision-Recall Curve")
    return _save(fig, path)


def plot_metric_curve(res: APResult, which: str, names: Mapping[int, str], path: str | Path) -> Path:
    """``which`` ('F1', 'Precision' or 'Recall') against confidence per class, and the smoothed mean with its
    maximum (the operating point of F1 is the one the metrics report)."""
    y = {"F1": res.f1_curve, "Precision": res.p_curve, "Recall": res.r_curve}[which]
    fig = _figure()
    ax = fig.add_subplot()
    labelled = len(res.classes) <= MAX_LEGEND_CLASSES
    for i, c in enumerate(res.classes):
        kw = dict(label=_name(names, c)) if labelled else dict(color="grey")
        ax.plot(res.px, y[i], linewidth=1, **kw)
    if len(res.classes):
        mean = smooth(y.mean(0), 0.05)
        j = int(mean.argmax())
        ax.plot(res.px, mean, linewidth=3, color="blue", label=f"all classes {mean[j]:.2f} at {res.px[j]:.3f}")
    _finish(ax, "Confidence", which, f"{which}-Confidence Curve")
    return _save(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, names: Mapping[int, str], path: str | Path) -> Path:
    """The matrix normalised per true class (columns), background row and column last; cells under 0.005 blank."""
    nc = matrix.shape[0] - 1
    norm = matrix / (matrix.sum(0, keepdims=True) + 1e-9)
    norm = np.where(norm < 0.005, np.nan, norm)
    fig = _figure((12, 9))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    labels = [_name(names, c) for c in range(nc)] + ["background"]
    if nc <= MAX_ANNOTATED_CLASSES:
        ax.set_xticks(range(nc + 1), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(nc + 1), labels, fontsize=8)
        for (r, c), v in np.ndenumerate(norm):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "k")
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix")
    return _save(fig, path)


def _finish(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left", fontsize=8)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def plot_validation(
    res: APResult, matrix: np.ndarray | None, names: Mapping[int, str], folder: str | Path
) -> list[Path]:
    """Every picture of one validation into ``folder``; the paths written."""
    folder = Path(folder)
    paths = [plot_pr_curve(res, names, folder / "PR_curve.png")]
    for which, prefix in (("F1", "F1"), ("Precision", "P"), ("Recall", "R")):
        paths.append(plot_metric_curve(res, which, names, folder / f"{prefix}_curve.png"))
    if matrix is not None:
        paths.append(plot_confusion_matrix(matrix, names, folder / "confusion_matrix.png"))
    return paths
