"""bench/evolve.py's callback in our children: wall-clock stamps of a run's phases, written to ``clock.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class ChildClock(L.Callback):
    """Stamps (``time.time()``) at the first training batch and at the first validation's start and end."""

    def __init__(self) -> None:
        self.stamps: dict[str, float] = {}

    def _stamp(self, trainer: L.Trainer, name: str) -> None:
        if trainer.is_global_zero and name not in self.stamps:
            self.stamps[name] = time.time()
            (Path(trainer.default_root_dir) / "clock.json").write_text(json.dumps(self.stamps))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._stamp(trainer, "first_batch")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp(trainer, "val_start")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp(trainer, "val_end")
