"""AutoAnchor: at the start of a fresh fit, check the Detect anchors against the labels and refit them.

Rank 0 computes, every rank gets the same anchors through ``trainer.strategy.broadcast``; the new anchors are
written in place into ``pl_module.model.detect.anchors`` (grid units), so every checkpoint carries them.
Labels come from ``trainer.datamodule.train_dataset`` (``labels``, ``sizes_wh``); without a datamodule the check
waits for ``on_train_start`` and reads ``trainer.train_dataloader.dataset``.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch

from detector.anchor_check import AnchorCheck, check_anchors
from detector.anchors import label_wh

logger = logging.getLogger(__name__)


class AutoAnchor(L.Callback):
    """YOLOv5's check_anchors as a callback. Settings come from conf/callbacks (no defaults here). A model built
    with placeholder anchors (``placeholder_anchors``, from hyp ``anchors``) always takes the new ones.

    Args:
        thr: anchor/label size ratio threshold (hyp ``anchor_t``).
        imgsz: training image size; labels are measured with the image long side at this size.
        enabled: False skips the check (``--noautoanchor``).
        gen: generations of the genetic refinement.
        bpr_target: current anchors with a BPR above this are kept.
        seed: seed of the scale jitter, k-means and mutations (rank 0 only).
        scale_jitter: per-image scale range applied to label sizes when measuring BPR.
        population: mutations scored per generation.
        climbers: independent hill climbers sharing the population.
        kmeans_boxes: labels k-means runs on (random subsample; None: all).
        kmeans_iter: k-means restarts.
        bin_step: log-size grid the genetic search bins all labels on (None: unbinned).
    """

    def __init__(
        self,
        *,
        thr: float,
        imgsz: int,
        enabled: bool,
        gen: int,
        bpr_target: float,
        seed: int,
        scale_jitter: tuple[float, float],
        population: int,
        climbers: int,
        kmeans_boxes: int | None,
        kmeans_iter: int,
        bin_step: float | None,
    ) -> None:
        self.thr = float(thr)
        self.imgsz = int(imgsz)
        self.enabled = enabled
        self.gen = int(gen)
        self.bpr_target = float(bpr_target)
        self.seed = int(seed)
        self.scale_jitter = (float(scale_jitter[0]), float(scale_jitter[1]))
        self.population = int(population)
        self.climbers = int(climbers)
        self.kmeans_boxes = None if kmeans_boxes is None else int(kmeans_boxes)
        self.kmeans_iter = int(kmeans_iter)
        self.bin_step = None if bin_step is None else float(bin_step)
        self.result: AnchorCheck | None = None  # the last check (rank 0 only), for inspection
        self._deferred = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferred = False
        if not self.enabled:
            logger.info("AutoAnchor: disabled, keeping the model's anchors")
            return
        if trainer.ckpt_path:
            logger.info("AutoAnchor: resuming from %s, keeping the checkpoint's anchors", trainer.ckpt_path)
            return
        dataset = _with_labels(getattr(getattr(trainer, "datamodule", None), "train_dataset", None))
        if dataset is None:  # no datamodule: the train dataloader only exists from on_train_start
            self._deferred = True
            return
        self._run(trainer, pl_module, dataset)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._deferred:
            return
        self._deferred = False
        dataset = _with_labels(getattr(trainer.train_dataloader, "dataset", None))
        if dataset is None:
            logger.warning("AutoAnchor: no training dataset with labels and image sizes found; keeping the anchors")
            return
        self._run(trainer, pl_module, dataset)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, dataset) -> None:
        """Rank 0 computes, all ranks receive and write the same grid-unit anchors."""
        grid = None
        if trainer.is_global_zero:
            try:
                grid = self._compute(pl_module, dataset)
            except Exception as e:  # never stop training over anchors (YOLOv5's TryExcept)
                logger.warning("AutoAnchor: failed (%s: %s), continuing with the current anchors", type(e).__name__, e)
        grid = trainer.strategy.broadcast(grid, src=0)
        if grid is None:
            return
        try:
            detect = pl_module.model.detect
            with torch.no_grad():
                detect.anchors.copy_(torch.as_tensor(grid).to(detect.anchors))
        except Exception as e:
            logger.warning(
                "AutoAnchor: could not write the new anchors (%s: %s), keeping the current ones",
                type(e).__name__,
                e,
            )

    def _compute(self, pl_module: L.LightningModule, dataset) -> np.ndarray | None:
        """New anchors in grid units ``(nl, na, 2)``, or None to keep the current ones. Logs the outcome."""
        detect = pl_module.model.detect
        stride = getattr(detect, "stride", None)
        if stride is None:
            stride = pl_module.model.stride
        stride = torch.as_tensor(stride).detach().cpu().double().reshape(-1)
        anchors_px = (detect.anchors.detach().cpu().double() * stride.view(-1, 1, 1)).numpy()
        rng = np.random.default_rng(self.seed)
        labels, sizes_wh = dataset.labels, dataset.sizes_wh
        wh = label_wh(labels, sizes_wh, self.imgsz, rng=rng, scale_jitter=self.scale_jitter)
        wh_fit = label_wh(labels, sizes_wh, self.imgsz, warn=False)  # same rows as wh, already reported
        self.result = res = check_anchors(
            wh,
            anchors_px,
            stride.numpy(),
            self.thr,
            self.imgsz,
            wh_fit=wh_fit,
            force=bool(getattr(pl_module.model, "placeholder_anchors", False)),  # hyp.anchors: take new ones
            bpr_target=self.bpr_target,
            gen=self.gen,
            rng=rng,
            population=self.population,
            climbers=self.climbers,
            kmeans_boxes=self.kmeans_boxes,
            kmeans_iter=self.kmeans_iter,
            bin_step=self.bin_step,
        )
        level = logging.WARNING if res.warn else logging.INFO
        if res.anchors is None:
            logger.log(level, "AutoAnchor: %s", res.summary())
            return None
        new = ", ".join(f"{w:.0f},{h:.0f}" for w, h in res.anchors.reshape(-1, 2))
        logger.log(level, "AutoAnchor: %s New anchors (px): %s", res.summary(), new)
        return (res.anchors / stride.numpy().reshape(-1, 1, 1)).astype(np.float32)


def _with_labels(dataset):
    """``dataset`` if it has ``labels`` and ``sizes_wh`` (what AutoAnchor reads), else None."""
    if dataset is not None and hasattr(dataset, "labels") and hasattr(dataset, "sizes_wh"):
        return dataset
    return None
