"""LightningModule: the YOLOv5 network, loss and optimizer step rule, and validation with YOLOv5's metrics."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from detector.boxes import scale_boxes, xywh2xyxy
from detector.data.multiscale import multi_scale
from detector.ddp_buffers import broadcast_buffers
from detector.loss import YoloLoss, scale_loss_gains
from detector.metrics import DetectionEvaluator, fitness, format_per_class_table, mean_batch_loss
from detector.models import DetectionModel
from detector.models.inference_copy import inference_copy
from detector.nms import non_max_suppression
from detector.nonfinite import NonFiniteBatches, zero_if
from detector.optim import OptimizerChoice, auto_iterations, build_optimizer, resolve_optimizer, scaled_weight_decay
from detector.run_config import ConfigError
from detector.schedule import TrainingSchedule

log = logging.getLogger(__name__)

LOSS_NAMES = ("box_loss", "obj_loss", "cls_loss")


class DetectorModule(L.LightningModule):
    """YOLOv5 detector trained with YOLOv5's step rule under manual optimization.

    The step rule cannot use Lightning's ``accumulate_grad_batches``: YOLOv5 changes ``accumulate`` every batch during
    warmup and sums (never averages) the gradients of ``loss * batch_size * world_size`` over the accumulated batches.
    ``schedule`` holds the rule's settings beyond the hyp (``nbs``, ``cos_lr``, ``min_warmup_iters``,
    ``ramp_adam_beta1``); :attr:`schedule` is the resulting :class:`TrainingSchedule`, applied before every batch.
    """

    def __init__(
        self,
        *,
        model: Mapping[str, Any],
        nc: int,
        names: Mapping[int, str],
        hyp: Mapping[str, Any],
        imgsz: int,
        epochs: int,
        batch_size: int,
        schedule: Mapping[str, Any],
        optimizer: str,
        max_grad_norm: float,
        max_bad_steps: int,
        label_smoothing: float,
        single_cls: bool,
        multi_scale: bool,
        seed: int,
        val: Mapping[str, Any],
        freeze: int | Sequence[int] = 0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.names = dict(names)
        self.model = DetectionModel(model, nc=nc, anchors=hyp.get("anchors"))
        if channels_last:  # NHWC weights (and batches, see _pixels): faster convolutions, the same arithmetic
            self.model.to(memory_format=torch.channels_last)
        layers = frozen_layers(freeze, len(self.model.model))
        if layers:
            n = self.model.freeze(layers)
            log.info("freeze=%s: %d parameter tensors of layers %s get no gradient", freeze, n, layers)
        # The loss gains scaled to layers, classes and image size; the raw hyp stays in self.hparams.hyp.
        self.loss_fn = YoloLoss(self.model, scale_loss_gains(hyp, self.model.detect.nl, nc, imgsz), label_smoothing)
        self.val_cfg = dict(val)
        # Validation's folded copy of the model (inference_copy), in a list so that it is not a child module: its
        # tensors must stay out of the module's parameters, state_dict and the EMA's weight swaps.
        self._val_copy: list[torch.nn.Module] = []
        self.evaluator = DetectionEvaluator(
            nc, names=self.names, ap_method=self.val_cfg["ap_method"], coco=self.val_cfg["coco"] != "never"
        )
        self.last_opt_step = -1
        self.nonfinite = NonFiniteBatches(max_bad_steps)  # the batches whose loss was not finite
        self._loss_sum_read: torch.Tensor | None = None  # the loss sum read with the last flag (the "loss" log)
        self._stride_read: int | None = None  # the model's largest stride, read once
        self._choice: OptimizerChoice | None = None  # set by configure_optimizers (optimizer=auto resolves there)
        self._schedule: TrainingSchedule | None = None
        self._val_losses: list[tuple[int, int, int, torch.Tensor]] = []  # (batch, rank, images, box/obj/cls)
        self.last_loss_items = torch.zeros(3)
        self._train_sums: torch.Tensor | None = None  # this epoch's box/obj/cls losses times batch sizes, and images
        self.last_imgsz = int(imgsz)
        self.last_grad_norm = torch.zeros(())  # L2 norm of the gradients before the last clipping
        # Lightning's model summary runs this through the model (eval mode, no grad) to count FLOPs at the training
        # size; without it the summary says "Total Flops: 0"
        self.example_input_array = torch.zeros(1, 3, int(imgsz), int(imgsz))

    # ----------------------------------------------------------------------------------------------- optimization
    @property
    def nb(self) -> int:
        """Training batches per epoch on this rank."""
        nb = self.trainer.num_training_batches
        if not math.isfinite(nb) or nb < 1:
            raise RuntimeError(f"the step rule needs a sized train dataloader; num_training_batches={nb}")
        return int(nb)

    @property
    def schedule(self) -> TrainingSchedule:
        """The run's lr / momentum / accumulation schedule (known once the train loader is set up)."""
        if self._choice is None:
            raise RuntimeError("the schedule exists after configure_optimizers")
        nb = self.nb
        if self._schedule is None or self._schedule.nb != nb:
            hp, hyp = self.hparams, self.hparams.hyp
            self._schedule = TrainingSchedule(
                nb=nb,
                epochs=hp.epochs,
                batch_size=hp.batch_size,
                lr0=self._choice.lr,
                momentum=self._choice.momentum,
                warmup_bias_lr=self._choice.warmup_bias_lr,
                lrf=float(hyp["lrf"]),
                warmup_epochs=float(hyp["warmup_epochs"]),
                warmup_momentum=float(hyp["warmup_momentum"]),
                **hp.schedule,
            )
        return self._schedule

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        nbs = int(hp.schedule["nbs"])
        n_images = len(self.trainer.datamodule.train_dataset) if self.trainer.datamodule is not None else 0
        self._choice = resolve_optimizer(
            hp.optimizer,
            lr0=float(hp.hyp["lr0"]),
            momentum=float(hp.hyp["momentum"]),
            warmup_bias_lr=float(hp.hyp["warmup_bias_lr"]),
            nc=hp.nc,
            iterations=auto_iterations(n_images, hp.batch_size, nbs, hp.epochs),
        )
        self._schedule = None
        decay = scaled_weight_decay(float(hp.hyp["weight_decay"]), hp.batch_size, nbs)
        # No LR scheduler: the schedule sets every group's lr before each batch (stateless, so resume is exact).
        return build_optimizer(self.model, self._choice.name, self._choice.lr, self._choice.momentum, decay)

    def on_train_start(self) -> None:
        """A fresh fit starts from fp16-rounded weights and anchors, as YOLOv5's train.py (model.half().float()
        after AutoAnchor, whose callback hooks run before this one); a resumed fit keeps its checkpoint's."""
        if self.trainer.ckpt_path:
            return
        with torch.no_grad():
            for t in (*self.model.parameters(), *self.model.buffers()):
                if t.is_floating_point():
                    t.copy_(t.half())

    def on_train_epoch_start(self) -> None:
        self.optimizers().zero_grad()  # YOLOv5 drops gradients left over from the previous epoch
        self._train_sums = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """train/box_loss, obj_loss, cls_loss after the epoch's last batch (or the batch training stops at): the
        epoch's mean over every rank's batches, weighted by batch size, as Lightning's ``self.log(on_epoch=True,
        sync_dist=True)`` in every batch would give; that costs ~1 ms a batch for the three, this one tensor add a
        batch and one reduce an epoch. Logged here, not in on_train_epoch_end, which Lightning calls after the
        callbacks' (results.csv reads them there). First the host reads the flags training_step deferred."""
        if not self._epoch_ends_after(batch_idx):
            return
        self.nonfinite.read()  # the epoch's last deferred non-finite flags: warnings, max_bad_steps, finite batches
        sums, good = self._train_sums, self.nonfinite.take_good_batches()
        self._train_sums = None  # logged once an epoch
        if sums is None or not good:  # no finite batch
            return
        # mean over ranks of the sums and of the image counts: sum / count over all ranks' batches
        sums = self.trainer.strategy.reduce(sums.clone(), reduce_op="mean")
        means = sums[:3] / sums[3]
        self.log_dict({f"train/{n}": v for n, v in zip(LOSS_NAMES, means, strict=True)}, on_step=False,
                      on_epoch=True, batch_size=1, sync_dist=True)  # fmt: skip

    def _epoch_ends_after(self, batch_idx: int) -> bool:
        """Whether Lightning ends the epoch after this batch: its last batch, max_steps, or a stop request once
        min_epochs and min_steps are met (Lightning's rule; a stop before them is ignored)."""
        trainer = self.trainer
        if batch_idx + 1 >= self.nb or 0 < trainer.max_steps <= trainer.global_step:
            return True
        min_epochs, min_steps = trainer.fit_loop.min_epochs, trainer.fit_loop.min_steps
        can_stop = (not min_epochs or self.current_epoch >= min_epochs) and (
            not min_steps or trainer.global_step >= min_steps
        )
        return bool(trainer.should_stop) and can_stop

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor | None:
        imgs, targets = batch[0], batch[1]
        imgs = self._pixels(imgs)
        ni = batch_idx + self.nb * self.current_epoch
        opt = self.optimizers()
        values = self.schedule.apply(opt.param_groups, ni)
        if self.hparams.multi_scale:
            gen = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + ni)  # same sizes after a resume
            imgs = multi_scale(imgs, self.hparams.imgsz, self._max_stride(), gen)
        self.last_imgsz = int(imgs.shape[-1])  # after multi-scale: the progress bar's Size column
        step = self.schedule.steps_at(ni, self.last_opt_step)
        write = self._step_values_written()
        # The host reads the non-finite flag (a wait for the device) only where it decides: before an optimizer step,
        # for the values written to the loggers, at the epoch's end. Elsewhere a bad batch is dropped on the device
        # (_drop_if_bad) and its flag read with the next one.
        read = step or write or batch_idx + 1 == self.nb
        # Under DDP, skip the gradient all-reduce on batches that only accumulate.
        no_sync = getattr(self.trainer.strategy, "block_backward_sync", None)
        with contextlib.nullcontext() if step or no_sync is None else no_sync():
            preds = self.model(imgs)
            loss, items = self.loss_fn(preds, targets)
            bad = self.nonfinite.flag(loss, self.trainer.strategy, self.trainer.world_size)
            skip = read and self._not_finite(bad, batch_idx, items.sum() if write else None)
            if not skip:
                self.manual_backward(loss * self.trainer.world_size)
        # Rank 0's BatchNorm statistics to every rank, after the backward (which checks that they are the ones its
        # forward saw): one model on every rank (detector/ddp_buffers.py says why)
        broadcast_buffers(self.model)
        if skip:
            opt.zero_grad()  # the batch and the accumulation window it was in are dropped
            return None
        bs = imgs.shape[0]
        # summed for the epoch mean over every rank's batches, logged in on_train_batch_end (YOLOv5 logs rank 0's alone)
        weighted = torch.cat((items.detach() * bs, items.new_full((1,), bs)))
        if not read:
            items, weighted = self._drop_if_bad(bad, batch_idx, items, weighted)
        self.last_loss_items = items  # (box, obj, cls) of this batch, detached
        if step:
            opt.step()  # clipping happens in on_before_optimizer_step, after AMP has unscaled the gradients
            opt.zero_grad()
            self.last_opt_step = ni
        self._train_sums = weighted if self._train_sums is None else self._train_sums + weighted
        # Host tensors for the loggers: Lightning would copy Python numbers to the device and read device tensors back.
        if write:  # the loss sum was read with the flag; the progress bar shows the box/obj/cls means instead
            self.log("loss", self._loss_sum_read, on_step=True, on_epoch=False, batch_size=bs)
            step_metrics = {f"lr/pg{j}": lr for j, lr in enumerate(values.lrs)}
            step_metrics |= {"momentum": values.momentum, "accumulate": float(values.accumulate)}
            self.log_dict({k: host_scalar(v) for k, v in step_metrics.items()}, on_step=True, on_epoch=False,
                          batch_size=1)  # fmt: skip
        if batch_idx + 1 == self.nb:  # YOLOv5's x/lr columns: each group's lr in the epoch's last batch
            for j, lr in enumerate(values.lrs):
                self.log(f"x/lr{j}", host_scalar(lr), on_step=False, on_epoch=True, batch_size=1)
        return loss.detach()

    def _max_stride(self) -> int:
        """The model's largest stride (multi-scale's size multiple), read from its device buffer once."""
        if self._stride_read is None:
            self._stride_read = int(self.model.stride.max())
        return self._stride_read

    def _step_values_written(self) -> bool:
        """Whether Lightning writes this batch's on_step values to the loggers (every ``log_every_n_steps`` batches).
        The lr, momentum and accumulation are logged only then: a ``self.log_dict`` of them costs ~2 ms a batch,
        a few percent of a GPU step. Lightning's own test, which has no public name (True where it is missing)."""
        connector = getattr(self.trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True)) or bool(self.trainer.fast_dev_run)

    @property
    def _val_nhwc(self) -> bool:
        return bool(self.hparams.channels_last or self.val_cfg.get("channels_last", False))

    def _pixels(self, imgs: torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
        """uint8 batch -> [0, 1] in the module's dtype (float64 under precision=64-true), NHWC with channels_last
        (default: the training layout)."""
        if self.hparams.channels_last if channels_last is None else channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)  # on the uint8 batch: a quarter of the bytes
        return (imgs.float() / 255).to(self.dtype)

    def _not_finite(self, bad: torch.Tensor, batch_idx: int, loss_sum: torch.Tensor | None = None) -> bool:
        """Whether this batch's flag ``bad`` says its loss is not finite (then it is skipped). The host's one wait for
        the device: ``bad``, the flags deferred since the last read and ``loss_sum`` (kept on the CPU in
        ``_loss_sum_read``) come in one copy."""
        values = self.nonfinite.read(bad, *([] if loss_sum is None else [loss_sum]))
        if loss_sum is not None:
            self._loss_sum_read = torch.tensor(values[1], dtype=loss_sum.dtype)
        return self.nonfinite.count(self.current_epoch, batch_idx, values[0] != 0)

    def _drop_if_bad(
        self, bad: torch.Tensor, batch_idx: int, items: torch.Tensor, weighted: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch trained without reading its flag ``bad``: if set, it is dropped on the device as the host would
        skip it (the gradients of its accumulation window zeroed; its losses kept out of ``last_loss_items`` and the
        epoch sums: ``items`` and ``weighted`` returned as they should be used), and reported at the next read."""
        self.nonfinite.defer(self.current_epoch, batch_idx, bad)
        zero_if(bad, [p.grad for p in self.parameters() if p.grad is not None])
        dropped = bad.bool()
        items = torch.where(dropped, self.last_loss_items.to(items), items)
        return items, torch.where(dropped, 0.0, weighted)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after the AMP scaler's unscale_: clipping earlier would clip the scaled gradients.
        # torch's clip_grad_norm_ directly (as Lightning's clip_gradients does for this strategy) for its return value.
        self.last_grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.hparams.max_grad_norm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["last_opt_step"] = self.last_opt_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.last_opt_step = int(checkpoint.get("last_opt_step", -1))

    # --------------------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        coco = self.val_cfg["coco"]
        fitting = self.trainer.state.fn == TrainerFn.FITTING
        last_epoch = self.current_epoch + 1 >= self.hparams.epochs
        self.evaluator.coco_active = coco == "always" or (coco == "final" and (last_epoch or not fitting))
        self.evaluator.reset()
        self._val_losses: list[tuple[int, int, int, torch.Tensor]] = []  # (batch, rank, images, box/obj/cls)
        # val.fuse_bn / val.channels_last: validate a copy of the weights validated (the EMA's: callbacks' hooks run
        # before this one), BatchNorm folded in, NHWC; with both off, the model itself.
        fuse_bn = bool(self.val_cfg.get("fuse_bn", False))
        if fuse_bn or self._val_nhwc != bool(self.hparams.channels_last):
            self._val_copy[:] = [inference_copy(self.model, fuse_bn=fuse_bn, channels_last=self._val_nhwc)]

    def validation_step(self, batch: tuple, batch_idx: int) -> list[torch.Tensor]:
        imgs, targets, _paths, infos = batch
        imgs = self._pixels(imgs, channels_last=self._val_nhwc)
        height, width = imgs.shape[2:]
        decoded, raw = (self._val_copy[0] if self._val_copy else self.model)(imgs)
        loss = self.loss_fn(raw, targets)[1].cpu().double()
        self._val_losses.append((batch_idx, self.global_rank, len(imgs), loss))
        dets = non_max_suppression(
            decoded,
            conf_thres=self.val_cfg["conf_thres"],
            iou_thres=self.val_cfg["iou_thres"],
            max_det=self.val_cfg["max_det"],
            multi_label=True,
            agnostic=self.hparams.single_cls,
        )
        scale = torch.tensor([width, height, width, height], device=targets.device)
        preds, labels = [], []
        for i, det in enumerate(dets):
            lab = targets[targets[:, 0] == i, 1:]
            boxes = xywh2xyxy(lab[:, 1:5]) * scale
            det = det.clone()
            if infos is not None and infos[i] is not None:
                # Compare in the image's native pixels, as YOLOv5 does.
                scale_boxes((height, width), det[:, :4], infos[i][0], infos[i][1])
                scale_boxes((height, width), boxes, infos[i][0], infos[i][1])
            preds.append(det.cpu())
            labels.append(torch.cat([lab[:, :1], boxes], 1).cpu())
        self.evaluator.update(preds, labels, keys=[(batch_idx, self.global_rank, j) for j in range(len(preds))])
        return dets  # in the batch's pixels, for ValidationPlots

    def _gather_validation(self) -> None:
        """Under DDP every rank validated its own blocks (BlockShardSampler): gather every rank's images and batch
        losses, so that each rank computes the metrics of the whole set, in a 1-process run's image order."""
        if self.trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return
        every = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(every, (self.evaluator.records(), self._val_losses))
        self.evaluator.replace_records([r for records, _ in every for r in records])
        self._val_losses = [item for _, losses in every for item in losses]

    def on_validation_epoch_end(self) -> None:
        self._val_copy.clear()  # rebuilt from the weights of the next validation
        self._gather_validation()
        results = self.evaluator.compute()
        metrics = {
            "metrics/precision": results["precision"],
            "metrics/recall": results["recall"],
            "metrics/mAP_0.5": results["mAP_0.5"],
            "metrics/mAP_0.5:0.95": results["mAP_0.5:0.95"],
        }
        if "coco/mAP" in results:
            metrics["metrics/coco_mAP"] = results["coco/mAP"]
            metrics["metrics/coco_mAP_0.5"] = results["coco/mAP_50"]
        val_loss = mean_batch_loss(self._val_losses)
        for name, value in zip(LOSS_NAMES, val_loss.tolist(), strict=True):
            metrics[f"val/{name}"] = value
        metrics["fitness"] = fitness(results)
        self.log_dict({k: float(v) for k, v in metrics.items()}, prog_bar=False)
        self.log("mAP50", float(results["mAP_0.5"]), prog_bar=True)
        self.last_val_results = results
        if self.current_epoch + 1 >= self.hparams.epochs or self.trainer.state.fn != TrainerFn.FITTING:
            log.info("\n%s", format_per_class_table(results, self.names))

    # ---------------------------------------------------------------------------------------------------- inference
    def forward(self, imgs: torch.Tensor) -> Any:
        return self.model(imgs)


def host_scalar(value: float) -> torch.Tensor:
    """``value`` as a CPU tensor for ``self.log``, in the dtype Lightning would use (the default, at least float32):
    Lightning puts a Python number on the training device, and reading it back to write it makes the host wait."""
    dtype = torch.get_default_dtype()
    return torch.tensor(value, dtype=dtype if dtype in (torch.float32, torch.float64) else torch.float32)


def frozen_layers(freeze: int | Sequence[int], n_layers: int) -> list[int]:
    """YOLOv5's ``--freeze``: N (or ``[N]``) is the first N layers, a longer list those layers."""
    layers = list(freeze) if isinstance(freeze, Sequence) else [int(freeze)]
    layers = list(range(layers[0])) if len(layers) == 1 else layers
    if any(not 0 <= i < n_layers for i in layers):
        raise ConfigError(f"freeze={freeze}: the model has layers 0-{n_layers - 1}")
    return layers
