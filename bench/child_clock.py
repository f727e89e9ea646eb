"""bench/evolve.py's callback in our children: wall-clock stamps of a run's phases, written to ``clock.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class ChildClock(L.Callback):
    """Stamps (``time.time()``) at setup, train start, first batch, train end, validation start/end and fit end."""

    def __init__(self) -> None:
        self.stamps: dict[str, float] = {}

    def _stamp(self, trainer: L.Trainer, name: str) -> None:
        if trainer.is_global_zero and name not in self.stamps:
            self.stamps[name] = time.time()
            (Path(trainer.default_root_dir) / "clock.json").write_text(json.dumps(self.stamps))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stamp(trainer, "setup")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp(trainer, "train_start")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._stamp(trainer, "first_batch")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stamps.pop("train_end", None)
        self._stamp(trainer, "train_end")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp(trainer, "val_start")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp(trainer, "val_end")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp(trainer, "fit_end")
