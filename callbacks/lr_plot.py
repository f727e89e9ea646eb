"""lr.png: the planned lr of every param group, momentum and accumulation of the whole run, at train start."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from detector.plots.lr import plot_lr_schedule

log = logging.getLogger(__name__)


class LrPlot(Callback):
    """Plots ``pl_module.schedule`` (a :class:`detector.schedule.TrainingSchedule`) to ``save_dir/lr.png``.

    Global rank zero only; at train start, the first moment the number of batches per epoch is known."""

    def __init__(self, save_dir: str | Path) -> None:
        self.save_dir = Path(save_dir)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        path = plot_lr_schedule(pl_module.schedule.plan(), self.save_dir / "lr.png")
        log.info("planned lr schedule saved to %s", path)
