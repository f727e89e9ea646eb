"""After training (and after a validation run on its own): results.png, the PR/F1/P/R curves, the confusion
matrix, val_batch0_labels.jpg / val_batch0_pred.jpg and the per-class table, in the run folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from detector.boxes import xyxy2xywh
from detector.callbacks.results_csv import read_results
from detector.metrics import format_per_class_table
from detector.plots.batches import plot_images
from detector.plots.results import plot_results
from detector.plots.validation import plot_validation

log = logging.getLogger(__name__)


class ValidationPlots(Callback):
    """Pictures of the last validation into ``save_dir``: at the end of a fit (with results.png from results.csv)
    or at the end of ``Trainer.validate``. The confusion matrix counts detections above ``conf_thres`` paired with
    labels at IoU above ``iou_thres`` (YOLOv5: 0.25, 0.45); predictions are drawn above ``conf_thres`` too.

    Global rank zero only; the module provides ``last_val_results``, ``evaluator`` and ``names``, and its
    ``validation_step`` returns the batch's detections."""

    def __init__(self, save_dir: str | Path, *, conf_thres: float, iou_thres: float) -> None:
        self.save_dir = Path(save_dir)
        self.conf_thres, self.iou_thres = float(conf_thres), float(iou_thres)
        self._batch0: tuple[Any, ...] | None = None

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if batch_idx == 0 and trainer.is_global_zero and outputs is not None:
            imgs, targets, paths = batch[0], batch[1], batch[2]
            n = min(len(imgs), 16)
            self._batch0 = (imgs[:n].cpu(), targets[targets[:, 0] < n].cpu(), list(paths[:n]),
                            [d.detach().cpu() for d in outputs[:n]])  # fmt: skip

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            self._write(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        csv = self.save_dir / "results.csv"
        if csv.is_file():
            rows = read_results(csv)
            if rows:
                log.info("results plot saved to %s", plot_results(rows, self.save_dir / "results.png"))
        self._write(trainer, pl_module)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "last_val_results", None)
        if not trainer.is_global_zero or results is None:
            return
        names = dict(pl_module.names)
        matrix = pl_module.evaluator.confusion_matrix(self.conf_thres, self.iou_thres)
        plot_validation(results["ap_result"], matrix, names, self.save_dir)
        (self.save_dir / "per_class.txt").write_text(format_per_class_table(results, names) + "\n")
        if self._batch0 is not None:
            imgs, targets, paths, dets = self._batch0
            plot_images(imgs, targets, paths, names, self.save_dir / "val_batch0_labels.jpg")
            rows = [torch.cat([torch.full((len(d), 1), i), d[:, 5:6], xyxy2xywh(d[:, :4]), d[:, 4:5]], 1)
                    for i, d in enumerate(dets)]  # fmt: skip
            plot_images(imgs, torch.cat(rows) if rows else torch.zeros((0, 7)), paths, names,
                        self.save_dir / "val_batch0_pred.jpg", conf_thres=self.conf_thres)  # fmt: skip
        log.info("validation plots and per_class.txt saved to %s", self.save_dir)
