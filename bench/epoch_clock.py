"""bench/epoch.py's callback on our side: perf_counter after every validation, written to ``path`` as JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class EpochClock(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.stamps: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self.stamps.append(time.perf_counter())
            self.path.write_text(json.dumps(self.stamps))
