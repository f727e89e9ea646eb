"""YOLOv5's exponential moving average of the weights, on Lightning's WeightAveraging.

WeightAveraging already swaps the average in for validation, stores it as the checkpoint's ``state_dict`` (raw weights
under ``current_model_state``), restores both on resume and copies the average into the model when training ends.
Ours: YOLOv5's decay ramp ``d(u) = decay * (1 - exp(-u / tau))`` over optimizer steps u, the average starting from the
initial weights (as YOLOv5's ModelEMA), and the average kept on the training device in the model's precision.
"""

from __future__ import annotations

import math
from typing import Any

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

    def __call__(
        self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor | int
    ) -> None:
        # AveragedModel groups tensors by dtype; integer buffers (BatchNorm's num_batches_tracked) are not averaged.
        # YoloEMA passes num_averaged as a Python int: int() of a device tensor would make the host wait.
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
        self._n_averaged: int | None = None  # AveragedModel.n_averaged on the host; None: read it at the next update

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """WeightAveraging's update after each optimizer step, through :meth:`update_average`."""
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self.update_average(pl_module)
            self._latest_update_step = trainer.global_step

    def update_average(self, model: torch.nn.Module) -> None:
        """AveragedModel.update_parameters with the same arithmetic, without reading its device tensor
        ``n_averaged`` (its ``== 0``, ``> 0`` and the decay's ``int()`` each make the host wait for the device):
        the count comes from a host copy, read once (on the CPU in :meth:`on_fit_start`)."""
        average = self._average_model
        if self._n_averaged is None:
            self._n_averaged = int(average.n_averaged)
        averaged = [*average.module.parameters(), *average.module.buffers()]
        model_tensors = [*model.parameters(), *model.buffers()]
        current = [t.detach().to(a.device) for a, t in zip(averaged, model_tensors, strict=True)]
        with torch.no_grad():
            if self._n_averaged == 0:  # the first update copies, as AveragedModel's
                for a, c in zip(averaged, current, strict=True):
                    a.detach().copy_(c)
            else:
                groups: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
                for a, c in zip(averaged, current, strict=True):
                    group = groups.setdefault(a.dtype, ([], []))
                    group[0].append(a.detach())
                    group[1].append(c)
                for group_averaged, group_current in groups.values():
                    average.multi_avg_fn(group_averaged, group_current, self._n_averaged)
            average.n_averaged += 1  # on the device, no wait: kept for checkpoints
        self._n_averaged += 1

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        self._n_averaged = None  # restored: read n_averaged again

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._n_averaged = None
        if stage == "fit" and self.from_init:
            self._average_model.update_parameters(pl_module)  # the first call copies: n_averaged = 1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # setup runs before the strategy moves and converts the module: follow it to its device and precision
        # (else the average of a GPU run lives on the CPU, and a 64-true run averages in float32).
        if self._average_model is not None and self._n_averaged is None:
            self._n_averaged = int(self._average_model.n_averaged)  # still on the CPU here (after a resume's load)
        if self._average_model is not None and self._device is None:
            self._average_model.to(device=pl_module.device, dtype=pl_module.dtype)
