"""LightningModule: the YOLOv5 network, loss and optimizer step rule, and validation with YOLOv5's metrics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from detector.boxes import scale_boxes, xywh2xyxy
from detector.data.multiscale import multi_scale
from detector.loss import YoloLoss, scale_loss_gains
from detector.metrics import DetectionEvaluator, fitness, format_per_class_table
from detector.models import DetectionModel
from detector.nms import non_max_suppression
from detector.optim import (
    accumulate_for,
    auto_iterations,
    build_optimizer,
    build_scheduler,
    lr_lambda,
    resolve_optimizer,
    scaled_weight_decay,
)

log = logging.getLogger(__name__)

LOSS_NAMES = ("box_loss", "obj_loss", "cls_loss")


class DetectorModule(L.LightningModule):
    """YOLOv5 detector trained with YOLOv5's step rule under manual optimization.

    The step rule cannot use Lightning's ``accumulate_grad_batches``: YOLOv5 changes ``accumulate`` every batch during
    warmup and sums (never averages) the gradients of ``loss * batch_size * world_size`` over the accumulated batches.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        nc: int,
        names: Mapping[int, str],
        hyp: Mapping[str, Any],
        imgsz: int,
        epochs: int,
        batch_size: int,
        optimizer: str = "SGD",
        cos_lr: bool = False,
        nbs: int = 64,
        max_grad_norm: float = 10.0,
        label_smoothing: float = 0.0,
        single_cls: bool = False,
        multi_scale: bool = False,
        seed: int = 0,
        val: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.names = dict(names)
        self.model = DetectionModel(model, nc=nc, anchors=hyp.get("anchors"))
        self.hyp = scale_loss_gains(hyp, self.model.detect.nl, nc, imgsz)
        self.loss_fn = YoloLoss(self.model, self.hyp, label_smoothing=label_smoothing)
        self.val_cfg = dict(val or {})
        self.evaluator = DetectionEvaluator(
            nc,
            names=self.names,
            ap_method=self.val_cfg.get("ap_method", "interp"),
            coco=self.val_cfg.get("coco", "final") != "never",
        )
        self.accumulate = accumulate_for(batch_size, nbs)  # the warmup callback changes it per batch
        self.last_opt_step = -1
        self.warmup_bias_lr = float(hyp["warmup_bias_lr"])  # optimizer=auto may change it
        self._val_loss = torch.zeros(3)
        self._val_batches = 0
        self.last_loss_items = torch.zeros(3)
        self.last_grad_norm = torch.zeros(())  # L2 norm of the gradients before the last clipping

    # ----------------------------------------------------------------------------------------------- optimization
    @property
    def nb(self) -> int:
        """Training batches per epoch on this rank."""
        return int(self.trainer.num_training_batches)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        n_images = len(self.trainer.datamodule.train_dataset) if self.trainer.datamodule is not None else 0
        choice = resolve_optimizer(
            hp.optimizer,
            lr0=float(hp.hyp["lr0"]),
            momentum=float(hp.hyp["momentum"]),
            warmup_bias_lr=float(hp.hyp["warmup_bias_lr"]),
            nc=hp.nc,
            iterations=auto_iterations(n_images, hp.batch_size, hp.nbs, hp.epochs),
        )
        self.warmup_bias_lr = choice.warmup_bias_lr
        decay = scaled_weight_decay(float(hp.hyp["weight_decay"]), hp.batch_size, self.accumulate, hp.nbs)
        optimizer = build_optimizer(self.model, choice.name, choice.lr, choice.momentum, decay)
        scheduler = build_scheduler(optimizer, lr_lambda(hp.epochs, float(hp.hyp["lrf"]), hp.cos_lr))
        # Stepped by on_train_batch_end after the epoch's last batch (manual optimization steps nothing itself).
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_train_epoch_start(self) -> None:
        self.optimizers().zero_grad()  # YOLOv5 drops gradients left over from the previous epoch

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        imgs, targets = batch[0], batch[1]
        imgs = (imgs.float() / 255).to(self.dtype)  # float64 under precision=64-true
        ni = batch_idx + self.nb * self.current_epoch
        if self.hparams.multi_scale:
            gen = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + ni)  # same sizes after a resume
            imgs = multi_scale(imgs, self.hparams.imgsz, int(self.model.stride.max()), gen)
        step = ni - self.last_opt_step >= self.accumulate
        # Under DDP, skip the gradient all-reduce on batches that only accumulate.
        no_sync = getattr(self.trainer.strategy, "block_backward_sync", None)
        with contextlib.nullcontext() if step or no_sync is None else no_sync():
            preds = self.model(imgs)
            loss, items = self.loss_fn(preds, targets)
            self.manual_backward(loss * self.trainer.world_size)
        self.last_loss_items = items  # (box, obj, cls) of this batch, detached
        if step:
            opt = self.optimizers()
            opt.step()  # clipping happens in on_before_optimizer_step, after AMP has unscaled the gradients
            opt.zero_grad()
            self.last_opt_step = ni
        bs = imgs.shape[0]
        for name, value in zip(LOSS_NAMES, items, strict=True):
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=bs)
        self.log("loss", items.sum(), prog_bar=True, on_step=True, on_epoch=False, batch_size=bs)
        return loss.detach()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this after the AMP scaler's unscale_: clipping earlier would clip the scaled gradients.
        # torch's clip_grad_norm_ directly (as Lightning's clip_gradients does for this strategy) for its return value.
        self.last_grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.hparams.max_grad_norm)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 == self.nb:
            # YOLOv5 logs the lr of each group just before the per-epoch scheduler step, which follows the batch loop.
            for j, group in enumerate(self.optimizers().param_groups):
                self.log(f"x/lr{j}", group["lr"], on_step=False, on_epoch=True, batch_size=1)
            self.lr_schedulers().step()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["last_opt_step"] = self.last_opt_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.last_opt_step = int(checkpoint.get("last_opt_step", -1))

    # --------------------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        coco = self.val_cfg.get("coco", "final")
        fitting = self.trainer.state.fn == TrainerFn.FITTING
        last_epoch = self.current_epoch + 1 >= (self.trainer.max_epochs or 0)
        self.evaluator.coco_active = coco == "always" or (coco == "final" and (last_epoch or not fitting))
        self.evaluator.reset()
        self._val_loss = torch.zeros(3)
        self._val_batches = 0

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        imgs, targets, _paths, shapes = batch
        imgs = (imgs.float() / 255).to(self.dtype)
        height, width = imgs.shape[2:]
        decoded, raw = self.model(imgs)
        self._val_loss += self.loss_fn(raw, targets)[1].cpu()
        self._val_batches += 1
        dets = non_max_suppression(
            decoded,
            conf_thres=self.val_cfg.get("conf_thres", 0.001),
            iou_thres=self.val_cfg.get("iou_thres", 0.6),
            max_det=self.val_cfg.get("max_det", 300),
            multi_label=True,
            agnostic=self.hparams.single_cls,
        )
        scale = torch.tensor([width, height, width, height], device=targets.device)
        preds, labels = [], []
        for i, det in enumerate(dets):
            lab = targets[targets[:, 0] == i, 1:]
            boxes = xywh2xyxy(lab[:, 1:5]) * scale
            det = det.clone()
            if shapes is not None and shapes[i] is not None:
                # Compare in the image's native pixels, as YOLOv5 does.
                scale_boxes((height, width), det[:, :4], shapes[i][0], shapes[i][1])
                scale_boxes((height, width), boxes, shapes[i][0], shapes[i][1])
            preds.append(det.cpu())
            labels.append(torch.cat([lab[:, :1], boxes], 1).cpu())
        self.evaluator.update(preds, labels)

    def on_validation_epoch_end(self) -> None:
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
        val_loss = self._val_loss / max(self._val_batches, 1)
        for name, value in zip(LOSS_NAMES, val_loss.tolist(), strict=True):
            metrics[f"val/{name}"] = value
        metrics["fitness"] = fitness(results)
        self.log_dict({k: float(v) for k, v in metrics.items()}, prog_bar=False)
        self.log("mAP50", float(results["mAP_0.5"]), prog_bar=True)
        self.last_val_results = results
        if self.current_epoch + 1 >= self.trainer.max_epochs:
            log.info("\n%s", format_per_class_table(results, self.names))

    # ---------------------------------------------------------------------------------------------------- inference
    def forward(self, imgs: torch.Tensor) -> Any:
        return self.model(imgs)
