"""Median stopping for evolution children, smoothed as Ray Tune's median stopping rule: a child whose best fitness
so far at epoch k is below the median of the finished children's running mean fitness over epochs 0..k stops there.
Each child reads the sweep folder itself (the siblings' results.json and results.csv), so no launcher has to carry
messages back. Needs validation every epoch.

Single-epoch fitness is noise for the first epochs of a short child (it stays near zero until the model starts to
detect); the best-so-far against running means only stops a child that has never reached what its finished siblings
averaged, so that noise rarely stops a child that would have learned (``bench/evolve_prune.py``)."""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from detector.callbacks.results_csv import read_results

log = logging.getLogger(__name__)


def finished_fitness_upto(sweep_dir: Path, epoch: int, exclude: Path | None = None) -> list[list[float]]:
    """Fitness per epoch 0..``epoch`` of every finished child in ``sweep_dir`` (a job folder whose results.json
    has a fitness) that validated every one of those epochs."""
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
        by_epoch = {int(r["epoch"]): r.get("fitness", math.nan) for r in rows}
        values = [by_epoch.get(e, math.nan) for e in range(epoch + 1)]
        if all(math.isfinite(v) for v in values):
            out.append(values)
    return out


class MedianStopping(Callback):
    """Stops training after a validation at which the child's best fitness so far is below the median of the
    finished children's mean fitness over the same epochs.

    ``min_epochs``: epochs trained before a child may be stopped, or below 1 that fraction of its epochs (rounded
    up); ``min_finished``: finished children needed before any is stopped. Decided on rank 0 and broadcast, so
    every rank stops together.
    """

    def __init__(self, *, sweep_dir: str | Path, min_epochs: float, min_finished: int) -> None:
        if min_epochs < 0:
            raise ValueError(f"min_epochs must be >= 0 (below 1: a fraction of the epochs), got {min_epochs}")
        self.sweep_dir = Path(sweep_dir)
        self.min_epochs, self.min_finished = float(min_epochs), int(min_finished)
        self.best = -math.inf
        self.stopped_epoch: int | None = None

    def epochs_before_stopping(self, max_epochs: int) -> int:
        """Epochs a child trains before it may be stopped."""
        if self.min_epochs < 1:
            return math.ceil(self.min_epochs * max_epochs)
        return int(self.min_epochs)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict.get("best", -math.inf))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        fitness = float(trainer.callback_metrics.get("fitness", math.nan))
        if math.isfinite(fitness):
            self.best = max(self.best, fitness)
        if epoch + 1 < self.epochs_before_stopping(trainer.max_epochs) or epoch + 1 >= trainer.max_epochs:
            return
        stop = False
        if trainer.is_global_zero:
            others = finished_fitness_upto(self.sweep_dir, epoch, exclude=Path(trainer.default_root_dir))
            if len(others) >= self.min_finished:
                median = statistics.median(statistics.fmean(v) for v in others)
                if self.best < median:
                    log.info("median stopping: best fitness %.5f by epoch %d is below the median %.5f of %d finished "
                             "children's mean fitness over epochs 0-%d; stopping",
                             self.best, epoch, median, len(others), epoch)  # fmt: skip
                    stop = True
        if trainer.strategy.broadcast(stop, src=0):
            trainer.should_stop = True
            self.stopped_epoch = epoch
