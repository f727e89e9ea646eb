"""YOLOv5's early stopping on Lightning's EarlyStopping: a fitness equal to the best counts as an improvement (YOLOv5
compares with >=; Lightning's strict > would stop a run whose fitness sits at 0 early on), and patience 0 switches
it off."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import EarlyStopping


class YoloEarlyStopping(EarlyStopping):
    """Stops when ``patience`` epochs passed without a fitness at least as good as the best one."""

    mode_dict = {"min": torch.le, "max": torch.ge}

    def __init__(self, *, patience: int, monitor: str = "fitness", mode: str = "max") -> None:
        super().__init__(monitor=monitor, mode=mode, patience=patience)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        if self.patience <= 0:
            return False, None
        return super()._evaluate_stopping_criteria(current)
