"""YOLOv5's exponential moving average of the weights, on Lightning's WeightAveraging.

WeightAveraging already swaps the average in for validation, stores it as the checkpoint's ``state_dict`` (raw weights
under ``current_model_state``), restores both on resume and copies the average into the model when training ends.
Only the averaging rule is ours: YOLOv5's decay ramp ``d(u) = decay * (1 - exp(-u / tau))`` over optimizer steps u.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import WeightAveraging


class YoloEmaAverage:
    """``multi_avg_fn`` for AveragedModel: ema = d * ema + (1 - d) * model on floating-point tensors only."""

    def __init__(self, decay: float = 0.9999, tau: float = 2000.0) -> None:
        self.decay = decay
        self.tau = tau

    def decay_at(self, updates: int) -> float:
        """Decay of the ``updates``-th update (1-based, as YOLOv5 counts)."""
        return self.decay * (1 - math.exp(-updates / self.tau))

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # AveragedModel groups tensors by dtype; integer buffers (BatchNorm's num_batches_tracked) are not averaged.
        if not averaged or not averaged[0].is_floating_point():
            return
        # AveragedModel copies the model on its first update, so the n-th call here is YOLOv5's update n + 1.
        weight = 1.0 - self.decay_at(int(num_averaged) + 1)
        for a, c in zip(averaged, current, strict=True):
            a.lerp_(c.to(a.dtype), weight)


class YoloEMA(WeightAveraging):
    """EMA of the model weights updated after every optimizer step, used for validation and checkpoints."""

    def __init__(self, decay: float = 0.9999, tau: float = 2000.0) -> None:
        super().__init__(use_buffers=True, multi_avg_fn=YoloEmaAverage(decay, tau))

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None
