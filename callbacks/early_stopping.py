"""YOLOv5's early stopping on Lightning's EarlyStopping: a fitness equal to the best counts as an improvement (YOLOv5
compares with >=; Lightning's strict > would stop a run whose fitness sits at 0 early on), and patience 0 switches
it off. A run without validation (``trainer.limit_val_batches=0``) has no fitness to watch: it trains on, with early
stopping off, instead of failing at the end of its first epoch."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping

log = logging.getLogger(__name__)


class YoloEarlyStopping(EarlyStopping):
    """Stops when ``patience`` epochs passed without a fitness at least as good as the best one."""

    mode_dict = {"min": torch.le, "max": torch.ge}

    def __init__(self, *, patience: int, monitor: str = "fitness", mode: str = "max") -> None:
        super().__init__(monitor=monitor, mode=mode, patience=patience)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.patience > 0 and not trainer.enable_validation:
            log.info("early stopping is off: this run does not validate, so it has no %s to watch", self.monitor)

    def _should_skip_check(self, trainer: L.Trainer) -> bool:
        return self.patience <= 0 or not trainer.enable_validation or super()._should_skip_check(trainer)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        if self.patience <= 0:
            return False, None
        return super()._evaluate_stopping_criteria(current)
