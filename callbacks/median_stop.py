"""Median stopping for evolution children: a child whose fitness at epoch k is below the median of the finished
children's fitness at epoch k stops there. Each child reads the sweep folder itself (the siblings' results.json and
results.csv), so no launcher has to carry messages back. Needs validation every epoch."""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from detector.callbacks.results_csv import read_results

log = logging.getLogger(__name__)


def finished_fitness_at(sweep_dir: Path, epoch: int, exclude: Path | None = None) -> list[float]:
    """The fitness at ``epoch`` of every finished child in ``sweep_dir`` (a job folder whose results.json has a
    fitness) that validated that epoch."""
    out = []
    for job in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        if exclude is not None and job.resolve() == exclude.resolve():
            continue
        try:
            if "fitness" not in json.loads((job / "results.json").read_text()):
                continue
            rows = read_results(job / "results.csv")
        except (OSError, ValueError, KeyError, IndexError):
            continue
        row = next((r for r in rows if int(r["epoch"]) == epoch), None)
        if row is not None and math.isfinite(row.get("fitness", math.nan)):
            out.append(row["fitness"])
    return out


class MedianStopping(Callback):
    """Stops training after a validation whose fitness is below the finished children's median at that epoch.

    ``min_epochs``: epochs trained before a child may be stopped; ``min_finished``: finished children needed
    before any is stopped. Decided on rank 0 and broadcast, so every rank stops together.
    """

    def __init__(self, *, sweep_dir: str | Path, min_epochs: int, min_finished: int) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.min_epochs, self.min_finished = int(min_epochs), int(min_finished)
        self.stopped_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or epoch + 1 < self.min_epochs or epoch + 1 >= trainer.max_epochs:
            return
        stop = False
        if trainer.is_global_zero:
            mine = float(trainer.callback_metrics.get("fitness", math.nan))
            others = finished_fitness_at(self.sweep_dir, epoch, exclude=Path(trainer.default_root_dir))
            if len(others) >= self.min_finished and mine < statistics.median(others):
                log.info("median stopping: fitness %.5f at epoch %d is below the median %.5f of %d finished "
                         "children; stopping", mine, epoch, statistics.median(others), len(others))  # fmt: skip
                stop = True
        if trainer.strategy.broadcast(stop, src=0):
            trainer.should_stop = True
            self.stopped_epoch = epoch
