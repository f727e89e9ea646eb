"""bench/epoch.py's callback on our side: perf_counter at each epoch's start, validation start and validation end,
written to ``path`` as JSON ``{"start": [...], "val_start": [...], "end": [...]}``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class EpochClock(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.stamps: dict[str, list[float]] = {"start": [], "val_start": [], "end": []}

    def _stamp(self, trainer: L.Trainer, key: str) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self.stamps[key].append(time.perf_counter())
            self.path.write_text(json.dumps(self.stamps))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp(trainer, "start")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp(trainer, "val_start")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp(trainer, "end")
