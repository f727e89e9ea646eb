"""YOLOv5's exponential moving average of the weights, on Lightning's WeightAveraging.

WeightAveraging already swaps the average in for validation, stores it as the checkpoint's ``state_dict`` (raw weights
under ``current_model_state``), restores both on resume and copies the average into the model when training ends.
Ours: YOLOv5's decay ramp ``d(u) = decay * (1 - exp(-u / tau))`` over optimizer steps u, the average starting from the
initial weights (as YOLOv5's ModelEMA), and the average kept on the training device in the model's precision.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging


class YoloEmaAverage:
    """``multi_avg_fn`` for AveragedModel: ema = d * ema + (1 - d) * model on floating-point tensors only.

    ``offset`` turns AveragedModel's count of averaged models into YOLOv5's update number: 0 when the average was
    seeded with the initial weights, 1 when AveragedModel's first update copied the model.
    """

    def __init__(self, decay: float, tau: float, offset: int = 0) -> None:
        self.decay = decay
        self.tau = tau
        self.offset = offset

    def decay_at(self, updates: int) -> float:
        """Decay of the ``updates``-th update (1-based, as YOLOv5 counts)."""
        return self.decay * (1 - math.exp(-updates / self.tau))

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # AveragedModel groups tensors by dtype; integer buffers (BatchNorm's num_batches_tracked) are not averaged.
        if not averaged or not averaged[0].is_floating_point():
            return
        weight = 1.0 - self.decay_at(int(num_averaged) + self.offset)
        # one multi-tensor call instead of a lerp_ per tensor (~350 for yolov5n): the same lerp on every tensor
        torch._foreach_lerp_(averaged, [c.to(a.dtype) for a, c in zip(averaged, current, strict=True)], weight)


class YoloEMA(WeightAveraging):
    """EMA of the model weights updated after every optimizer step, used for validation and checkpoints.

    ``from_init`` (YOLOv5): the average starts as the initial weights and the first step's update weighs them by
    d(1) ~ 0.0005; False: the first update copies the model (Lightning's AveragedModel default).
    """

    def __init__(self, *, decay: float, tau: float, from_init: bool) -> None:
        super().__init__(use_buffers=True, multi_avg_fn=YoloEmaAverage(decay, tau, offset=0 if from_init else 1))
        self.from_init = from_init

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.from_init:
            self._average_model.update_parameters(pl_module)  # the first call copies: n_averaged = 1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # setup runs before the strategy moves and converts the module: follow it to its device and precision
        # (else the average of a GPU run lives on the CPU, and a 64-true run averages in float32).
        if self._average_model is not None and self._device is None:
            self._average_model.to(device=pl_module.device, dtype=pl_module.dtype)
