"""Lightning DataModule: verified labels -> YoloDataset (train with augmentation, val rect) -> DataLoaders."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from detector.data.albumentations_extras import AlbumentationsExtras
from detector.data.config import DataConfig, img2label_paths, list_image_files
from detector.data.cpu_budget import loader_workers, rank_cpus, setup_threads
from detector.data.dataset import YoloDataset
from detector.data.image_cache import write_disk_cache
from detector.data.images import read_image
from detector.data.labels import LabelSet, default_cache_path, load_labels
from detector.data.sampler import BlockShardSampler, EpochSampler
from detector.data.shared_ram import SharedRam, shared_ram_for

log = logging.getLogger(__name__)


def init_loader_worker(_: int) -> None:
    """DataLoader worker_init_fn."""
    # No OpenCV threads inside loader processes: the workers already use the cores, and setNumThreads(1) after
    # fork deadlocks (measured with OpenCV 5.0).
    cv2.setNumThreads(0)


class DetectorDataModule(L.LightningDataModule):
    """Train/val loaders of a YOLOv5 dataset, as YOLOv5's ``create_dataloader`` builds them.

    ``batch_size`` is the total over devices; each device gets ``batch_size / world_size`` (it must divide); val
    uses twice that (``val_batch_size`` in total, when given), rect batches with pad 0.5 and no augmentation.
    ``augment`` is the conf/augment node (mosaic9, one_pass, mixup_beta, box-candidate thresholds, albumentations
    list). The dataset reports go to ``report_dir``.
    """

    def __init__(
        self,
        *,
        data: DataConfig,
        hyp: Mapping[str, Any],
        imgsz: int,
        batch_size: int,
        workers: int | str,
        seed: int,
        epochs: int,
        augment: Mapping[str, Any],
        cache: str | None,
        rect: bool,
        close_mosaic: int,
        single_cls: bool,
        repair_jpeg: bool,
        report_dir: str | Path | None,
        stride: int,
        val_pad: float,
        val_batch_size: int | None = None,
    ):
        super().__init__()
        self.data = data
        self.hyp = dict(hyp)
        self.imgsz = int(imgsz)
        self.batch_size = int(batch_size)
        self.workers = workers  # a number, or auto (cpu_budget.loader_workers)
        self.seed = int(seed)
        self.epochs = int(epochs)
        self.augment = dict(augment)
        self.cache = cache or None
        self.rect = bool(rect)
        self.close_mosaic = int(close_mosaic)
        self.single_cls = bool(single_cls)
        self.repair_jpeg = bool(repair_jpeg)
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.stride = int(stride)
        self.val_pad = float(val_pad)
        self.val_batch_size = val_batch_size
        self.train_dataset: YoloDataset | None = None
        self.val_dataset: YoloDataset | None = None
        self._labelsets: dict[str, LabelSet] = {}

    @property
    def nc(self) -> int:
        return 1 if self.single_cls else self.data.nc

    @property
    def names(self) -> dict[int, str]:
        if self.single_cls:
            return {0: self.data.names[0] if self.data.nc == 1 else "item"}
        return dict(self.data.names)

    def _world(self) -> tuple[int, int, int]:
        """(world_size, global rank, devices on this node), from the attached trainer when there is one."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0, 1
        return trainer.world_size, trainer.global_rank, max(1, getattr(trainer, "num_devices", 1))

    def _load_labels(self, split: str, log_report: bool) -> LabelSet:
        sources = getattr(self.data, split)
        im_files = list_image_files(sources)
        cache_path = default_cache_path(sources, img2label_paths(im_files[:1]))
        return load_labels(
            im_files,
            cache_path=cache_path,
            nc=self.data.nc,
            repair_jpeg=self.repair_jpeg,
            single_cls=self.single_cls,
            workers=setup_threads(),
            log_report=log_report,
        )

    def _labels(self, split: str) -> LabelSet:
        """The split's labels, loaded once per process (from the cache prepare_data wrote)."""
        if split not in self._labelsets:
            self._labelsets[split] = self._load_labels(split, log_report=False)
        return self._labelsets[split]

    def prepare_data(self) -> None:
        """Verify labels, write the label caches and log the dataset reports, once per node (local rank 0); with
        ``cache='disk'`` also write the images' .npy files, so that this process is the node's one writer: the other
        ranks wait at Lightning's barrier and then find every file there (setup writes only what is missing).

        Keeps no state (Lightning runs it on one process only): setup reloads from the caches."""
        for split in ("train", "val"):
            labels = self._load_labels(split, log_report=True)
            if self.cache == "disk" and labels.im_files:  # no images: setup raises the dataset's own error
                write_disk_cache(labels.im_files, self._npy_cache_dir(labels), read_image, setup_threads())

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs (train + val for fit, else val) and save their reports."""
        world, rank, _ = self._world()
        if self.batch_size % world:
            raise ValueError(
                f"batch_size={self.batch_size} does not divide by the {world} devices: batch_size is the total over "
                f"all devices (as YOLOv5's --batch-size); use a multiple of {world}"
            )
        self._train_batch = self.batch_size // world
        self._val_batch = self._train_batch * 2 if self.val_batch_size is None else self.val_batch_size // world
        splits = ["train"] if self.train_dataset is None and stage in (None, "fit") else []
        splits += ["val"] if self.val_dataset is None else []
        _, _, devices = self._world()
        if self.cache != "ram" or devices < 2 or not splits:
            self._build_splits(splits, rank, {})
        else:
            self._build_sharing_ram(splits, rank)

    def _build_splits(self, splits: list[str], rank: int, shared: dict[str, SharedRam]) -> None:
        world = self._world()[0]
        if "train" in splits:
            self.train_dataset = self._build("train", rank, True, self._train_batch * world, shared.get("train"))
        if "val" in splits:
            # rect shapes per group of every rank's val batch: the shapes of a 1-process run (BlockShardSampler)
            self.val_dataset = self._build("val", rank, False, self._val_batch * world, shared.get("val"))

    def _build_sharing_ram(self, splits: list[str], rank: int) -> None:
        """cache=ram with several processes on a node: the node's local rank 0 caches each split in a shared file,
        then the others map it (shared_ram). Every rank passes both barriers, whatever fails, and then raises."""
        strategy = self.trainer.strategy
        token = strategy.broadcast(uuid.uuid4().hex[:16] if rank == 0 else None, src=0)
        writer = self.trainer.local_rank == 0
        node = self.trainer.node_rank
        shared = {split: shared_ram_for(token, split, writer, node=node) for split in splits}
        error: Exception | None = None
        for turn in (True, False):
            if writer == turn:
                try:
                    self._build_splits(splits, rank, shared)
                except Exception as e:  # re-raised after the barriers, so that no rank waits for this one
                    error = e
            strategy.barrier(f"shared_ram_{'written' if turn else 'mapped'}")
        if writer:
            for s in shared.values():
                s.unlink()  # every local rank has mapped it: the memory lives until the last process ends
        if error is not None:
            raise error

    def _build(self, split: str, rank: int, augment: bool, batch: int, shared: SharedRam | None) -> YoloDataset:
        labels = self._labels(split)
        if self.report_dir is not None and rank == 0:  # load_labels has logged the report
            path = labels.report.save(self.report_dir / f"dataset_{split}.txt")
            log.info("%s dataset report saved to %s", split, path)
        common = dict(imgsz=self.imgsz, rendering=self.augment, hyp=self.hyp, stride=self.stride, seed=self.seed,
                      epochs=self.epochs, names=self.names, workers=max(1, self._workers(batch)), cache=self.cache,
                      cache_dir=self._npy_cache_dir(labels), shared_ram=shared, cpus=self._cpus())  # fmt: skip
        if not augment:
            return YoloDataset(
                labels, batch_size=batch, augment=False, rect=True, pad=self.val_pad, close_mosaic=0, **common
            )
        return YoloDataset(
            labels,
            batch_size=batch,  # rect groups span one batch of every rank (see EpochSampler)
            augment=True,
            rect=self.rect,
            close_mosaic=self.close_mosaic,
            albumentations=AlbumentationsExtras(self.augment["albumentations"]),
            **common,
        )

    def _npy_cache_dir(self, ls: LabelSet) -> Path | None:
        """``<labels dir>.npy-cache`` beside the label cache: the disk cache never writes into the dataset."""
        if self.cache != "disk":
            return None
        return Path(str(Path(ls.label_files[0]).parent) + ".npy-cache")

    def _cpus(self) -> int:
        """This rank's share of the CPUs this process may use: the ranks of this machine split them."""
        return rank_cpus(self._world()[2])

    def _workers(self, batch: int, scale: int = 1) -> int:
        """Loader workers of this rank for a loader of ``batch`` (cpu_budget.loader_workers: YOLOv5's rule)."""
        return loader_workers(self.workers, batch, self._cpus(), scale)

    def _loader(self, dataset: YoloDataset, batch: int, workers: int, shuffle: bool, rank: int, world: int,
                epoch: int = 0, sampler: Sampler | None = None):  # fmt: skip
        batch = min(batch, len(dataset))
        nw = min(workers, batch if batch > 1 else 0)  # a set smaller than the batch: its own size
        if sampler is None:
            sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=self.seed, rank=rank, world_size=world,
                                   epoch=epoch)  # fmt: skip
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=nw,
            pin_memory=torch.cuda.is_available(),
            collate_fn=YoloDataset.collate_fn,
            persistent_workers=nw > 0,
            worker_init_fn=init_loader_worker if nw > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        world, rank, _ = self._world()
        # On resume Lightning creates the epoch's iterator (setup_data) before it calls set_epoch, and a worker
        # loader draws its first batches right then: the sampler must start at the restored epoch, or the first
        # resumed epoch repeats epoch 0's order and augmentation (seen with workers > 0).
        trainer = self.trainer
        epoch = trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0
        workers = self._workers(self._train_batch)
        return self._loader(self.train_dataset, self._train_batch, workers, not self.rect, rank, world, epoch)

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        # Each rank validates its own blocks of the set; the module gathers the results (YOLOv5: rank 0 alone).
        world, rank, _ = self._world()
        n = len(self.val_dataset)
        if n < world:
            raise ValueError(f"the validation set has {n} images for {world} processes: every rank needs one")
        # Every rank must get a batch (a rank without one would skip validation and the gathering). A set smaller
        # than one rect group of every rank's val batch is one group, so smaller blocks keep its shapes.
        batch = min(self._val_batch, n // world)
        sampler = BlockShardSampler(n, batch=batch, rank=rank, world_size=world)
        return self._loader(self.val_dataset, batch, self._workers(batch, scale=2), False, rank, world, sampler=sampler)
