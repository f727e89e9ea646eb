"""Pictures of the training data: labels.jpg at fit start, train_batch0..2.jpg in the first epoch trained."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback

from detector.plots.batches import plot_images
from detector.plots.labels import plot_labels

log = logging.getLogger(__name__)


def _train_dataset(trainer: L.Trainer) -> Any:
    dm = trainer.datamodule
    if dm is not None and getattr(dm, "train_dataset", None) is not None:
        return dm.train_dataset
    loader = trainer.train_dataloader
    return getattr(loader, "dataset", None)


class DatasetPlots(Callback):
    """Saves labels.jpg (class histogram, box shapes, centres, sizes) at fit start and the first ``n_batches``
    training batches (boxes and class names) of the first epoch this fit trains, into ``save_dir``.

    Global rank zero only."""

    def __init__(self, save_dir: str | Path, *, n_batches: int) -> None:
        self.save_dir = Path(save_dir)
        self.n_batches = n_batches
        self._first_epoch: int | None = None

    def _names(self, trainer: L.Trainer) -> dict[int, str]:
        dm = trainer.datamodule
        if dm is not None and getattr(dm, "names", None):
            return dict(dm.names)
        return dict(getattr(_train_dataset(trainer), "names", None) or {})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_epoch = None
        if not trainer.is_global_zero:
            return
        dataset = _train_dataset(trainer)
        if dataset is None or not hasattr(dataset, "labels"):
            log.warning("DatasetPlots: no training dataset with labels found; labels.jpg not written")
            return
        labels = np.concatenate([np.asarray(lb).reshape(-1, 5) for lb in dataset.labels], 0)
        path = plot_labels(labels, self._names(trainer), self.save_dir)
        log.info("label statistics saved to %s", path)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._first_epoch is None:
            self._first_epoch = trainer.current_epoch

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or batch_idx >= self.n_batches or trainer.current_epoch != self._first_epoch:
            return
        imgs, targets, paths = batch[0], batch[1], batch[2]
        plot_images(imgs, targets, paths, self._names(trainer), self.save_dir / f"train_batch{batch_idx}.jpg")
