"""YOLOv5 gradual warmup of lr, momentum and gradient accumulation, applied before every training batch."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from detector.optim import PlannedSchedule, planned_schedule, warmup_iters, warmup_momentum_at, warmup_state

log = logging.getLogger(__name__)


class Warmup(Callback):
    """Ramp lr (group 0 = biases down from ``warmup_bias_lr``, others up from 0), momentum and accumulation.

    Stateless: every value is recomputed from (current_epoch, batch_idx), so resume needs nothing saved.
    Expects one optimizer whose groups carry ``initial_lr`` and one LambdaLR (``build_scheduler``) stepped per
    epoch by the module. Sets ``pl_module.accumulate`` during warmup. ``pl_module.warmup_bias_lr``, when
    present and not None, overrides ``warmup_bias_lr`` (optimizer=auto uses 0.0). ``ramp_adam_beta1``
    also ramps Adam/AdamW beta1 (YOLOv5 ramps only SGD momentum). Writes the planned schedule to lr.png.
    """

    def __init__(
        self,
        warmup_epochs: float = 3.0,
        warmup_bias_lr: float = 0.1,
        warmup_momentum: float = 0.8,
        momentum: float = 0.937,
        batch_size: int = 16,
        nbs: int = 64,
        min_iters: int = 100,
        save_dir: str | Path | None = None,
        ramp_adam_beta1: bool = True,
        plot: bool = True,
    ) -> None:
        self.warmup_epochs = warmup_epochs
        self.warmup_bias_lr = warmup_bias_lr
        self.warmup_momentum = warmup_momentum
        self.momentum = momentum
        self.batch_size = batch_size
        self.nbs = nbs
        self.min_iters = min_iters
        self.save_dir = save_dir
        self.ramp_adam_beta1 = ramp_adam_beta1
        self.plot = plot

    # ------------------------------------------------------------------ helpers

    def _bias_lr(self, pl_module: L.LightningModule) -> float:
        override = getattr(pl_module, "warmup_bias_lr", None)
        return self.warmup_bias_lr if override is None else float(override)

    @staticmethod
    def _lf(trainer: L.Trainer):
        configs = trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        if scheduler is None or not getattr(scheduler, "lr_lambdas", None):
            raise RuntimeError(
                "Warmup needs a LambdaLR scheduler from configure_optimizers "
                "(detector.optim.build_scheduler); "
                f"found {type(scheduler).__name__ if scheduler is not None else 'none'}"
            )
        return scheduler.lr_lambdas[0]

    @staticmethod
    def _nb(trainer: L.Trainer) -> int:
        nb = trainer.num_training_batches
        if not math.isfinite(nb) or nb < 1:
            raise RuntimeError(f"Warmup needs a sized train dataloader; num_training_batches={nb}")
        return int(nb)

    def _target_momentum(self, group: dict) -> float:
        return float(group.get("initial_momentum", self.momentum))

    @staticmethod
    def _group_momentum(group: dict) -> float | None:
        if "momentum" in group:
            return float(group["momentum"])
        if "betas" in group:
            return float(group["betas"][0])
        return None

    def plan(self, trainer: L.Trainer, pl_module: L.LightningModule) -> PlannedSchedule:
        """The planned per-iteration schedule for this trainer's whole run."""
        groups = trainer.optimizers[0].param_groups
        return planned_schedule(
            nb=self._nb(trainer),
            epochs=int(trainer.max_epochs),
            initial_lr=[g["initial_lr"] for g in groups],
            lf=self._lf(trainer),
            warmup_epochs=self.warmup_epochs,
            warmup_bias_lr=self._bias_lr(pl_module),
            warmup_momentum=self.warmup_momentum,
            momentum=self._target_momentum(groups[0]),
            batch_size=self.batch_size,
            nbs=self.nbs,
            min_iters=self.min_iters,
        )

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Planned here, not in on_fit_start: the number of batches is only known once the loader is set up.
        self._lf(trainer)
        groups = trainer.optimizers[0].param_groups
        if any("initial_lr" not in g for g in groups):
            raise RuntimeError("Warmup needs param groups with 'initial_lr' (create the LambdaLR scheduler)")
        if not self.plot:
            return
        # trainer.log_dir broadcasts, so every rank must ask for it.
        save_dir = Path(self.save_dir or trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        if trainer.max_epochs is None or trainer.max_epochs < 1:
            log.warning("no lr.png: max_epochs=%s is not a finite run", trainer.max_epochs)
            return
        from detector.plots.lr import plot_lr_schedule

        path = plot_lr_schedule(self.plan(trainer, pl_module), save_dir / "lr.png")
        log.info("planned lr schedule saved to %s", path)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        nb = self._nb(trainer)
        epoch = trainer.current_epoch
        ni = batch_idx + nb * epoch
        nw = warmup_iters(self.warmup_epochs, nb, self.min_iters)
        groups = trainer.optimizers[0].param_groups
        if ni <= nw:
            state = warmup_state(
                ni,
                nw,
                epoch,
                self._lf(trainer),
                [g["initial_lr"] for g in groups],
                self._bias_lr(pl_module),
                self.warmup_momentum,
                self.momentum,
                self.nbs,
                self.batch_size,
            )
            for group, lr in zip(groups, state.lrs, strict=True):
                group["lr"] = lr
                m = warmup_momentum_at(ni, nw, self.warmup_momentum, self._target_momentum(group))
                if "momentum" in group:
                    group["momentum"] = m
                elif "betas" in group and self.ramp_adam_beta1:
                    group["betas"] = (m, *tuple(group["betas"])[1:])
            pl_module.accumulate = state.accumulate
        self._log(pl_module, groups)

    @staticmethod
    def _log(pl_module: L.LightningModule, groups: list[dict]) -> None:
        metrics = {f"lr/pg{j}": float(g["lr"]) for j, g in enumerate(groups)}
        momentum = Warmup._group_momentum(groups[0]) if groups else None
        if momentum is not None:
            metrics["momentum"] = momentum
        accumulate = getattr(pl_module, "accumulate", None)
        if accumulate is not None:
            metrics["accumulate"] = float(accumulate)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
