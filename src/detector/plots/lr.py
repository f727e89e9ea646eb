"""Plot of the planned lr / momentum / accumulation schedule of a run (lr.png)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from detector.schedule import PlannedSchedule

GROUP_LABELS = ("pg0 biases", "pg1 weights (decay)", "pg2 norm weights")
MAX_EPOCH_LINES = 60  # above this many epochs boundaries are shown only on the top epoch axis
MAX_POINTS = 20_000  # longer runs are subsampled for drawing (warmup end and last iteration always kept)


def plot_lr_schedule(schedule: PlannedSchedule, save_path: str | Path) -> Path:
    """Save lr per group, momentum and accumulation vs iteration, with epoch boundaries and warmup end."""
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    nb, nw, epochs = schedule.nb, schedule.nw, schedule.epochs
    n = len(schedule.lr)
    x = np.arange(0, n, max(1, -(-n // MAX_POINTS)))
    x = np.unique(np.concatenate([x, [min(nw, n - 1), n - 1]]))

    # Figure/Agg directly instead of pyplot: no global backend or figure registry.
    fig = Figure(figsize=(10, 8), tight_layout=True)
    ax_lr, ax_m, ax_acc = fig.subplots(3, 1, sharex=True)
    for j in range(schedule.lr.shape[1]):
        label = GROUP_LABELS[j] if j < len(GROUP_LABELS) else f"pg{j}"
        ax_lr.plot(x, schedule.lr[x, j], label=label, linewidth=1.2, linestyle=("-", "--", ":")[j % 3])
    ax_m.plot(x, schedule.momentum[x], color="tab:purple", linewidth=1.2)
    ax_acc.step(x, schedule.accumulate[x], where="post", color="tab:green", linewidth=1.2)

    for ax in (ax_lr, ax_m, ax_acc):
        if epochs <= MAX_EPOCH_LINES:
            for e in range(1, epochs):
                ax.axvline(e * nb, color="0.85", linewidth=0.6, zorder=0)
        if nw < n:
            ax.axvline(nw, color="tab:red", linewidth=1.0, linestyle="--", label="warmup end")
        ax.grid(axis="y", alpha=0.3)
    ax_lr.set_ylabel("learning rate")
    ax_m.set_ylabel("momentum")
    ax_acc.set_ylabel("accumulate")
    ax_acc.set_xlabel("iteration")
    ax_lr.legend(loc="upper right", fontsize=8)
    top = ax_lr.secondary_xaxis("top", functions=(lambda i: i / nb, lambda e: e * nb))
    top.set_xlabel("epoch")
    ax_lr.set_title(f"planned schedule: {epochs} epochs x {nb} batches, warmup {nw + 1} iterations", fontsize=10)
    fig.savefig(save_path, dpi=150)
    return save_path
