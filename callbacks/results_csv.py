"""Writes results.csv in the run folder: one row per epoch with YOLOv5's column names plus fitness."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

COLUMNS = (
    "epoch",
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
    "x/lr0",
    "x/lr1",
    "x/lr2",
    "fitness",
)


class ResultsCSV(Callback):
    """Appends the epoch's logged metrics to ``save_dir/results.csv`` (YOLOv5's ``%20.5g`` formatting)."""

    def __init__(self, save_dir: str | Path, filename: str = "results.csv") -> None:
        self.path = Path(save_dir) / filename

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run continues the same file: rows of epochs it trains again (killed after the row was written,
        before the checkpoint) are dropped."""
        if trainer.current_epoch == 0 or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",")[0]) < trainer.current_epoch]
        if len(kept) != len(lines):
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(self.path)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = [trainer.current_epoch] + [self._value(metrics.get(k)) for k in COLUMNS[1:]]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow([f"{c:>20s}" for c in COLUMNS])
            writer.writerow([f"{row[0]:>20d}"] + [f"{v:20.5g}" for v in row[1:]])

    @staticmethod
    def _value(x: object) -> float:
        if x is None:
            return math.nan
        return float(x.item() if hasattr(x, "item") else x)  # type: ignore[union-attr]


def read_results(path: str | Path) -> list[dict[str, float]]:
    """Read a results.csv back into a list of {column: value} rows."""
    with Path(path).open() as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]]
    return [dict(zip(header, (float(v) for v in r), strict=True)) for r in rows[1:]]
