"""YOLOv5 7.0's own train.py, fed by our training data loader instead of its own: a swap test for issue 8.

    PYTHONPATH=src bench/.venv-yolov5/bin/python bench/yolov5_ourdata.py <YOLOv5 train.py arguments>
    .venv/bin/python bench/accuracy.py ... --trainers yolov5 yolov5-ourdata detector   # the same, side by side

Everything but the training batches is YOLOv5's: model, loss, optimizer, schedule, EMA, validation (its own
validation loader), AutoAnchor on its own label set. The batches come from our YoloDataset with conf/augment's
defaults, our EpochSampler (shuffled by (seed, epoch)) and as many workers as YOLOv5 would use. If YOLOv5 learns
as well with our batches as with its own, a gap between the trainers lies in our training step; if it learns as
ours does, in our data. Never imported by the product.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


class EpochLoader:
    """A DataLoader over an EpochSampler that advances the sampler's epoch at every pass (Lightning's job in ours)."""

    def __init__(self, loader, sampler) -> None:
        self.loader, self.sampler, self.epoch = loader, sampler, 0

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


def patch(train_module) -> None:
    """Replace train.py's create_dataloader for the training loader (augment=True); validation stays YOLOv5's."""
    import torch
    from torch.utils.data import DataLoader

    from detector import CONF_DIR
    from detector.data.dataset import YoloDataset
    from detector.data.labels import load_labels
    from detector.data.sampler import EpochSampler

    def init_loader_worker(_: int) -> None:  # as detector.data.datamodule's (which imports Lightning, absent here)
        import cv2

        cv2.setNumThreads(0)

    original = train_module.create_dataloader
    epochs = int(sys.argv[sys.argv.index("--epochs") + 1])

    def create_dataloader(path, imgsz, batch_size, stride, single_cls=False, hyp=None, augment=False, cache=False,
                          pad=0.0, rect=False, rank=-1, workers=8, image_weights=False, quad=False, prefix="",
                          shuffle=False, seed=0):  # fmt: skip
        y5_loader, y5_dataset = original(path, imgsz, batch_size, stride, single_cls, hyp=hyp, augment=augment,
                                         cache=cache, pad=pad, rect=rect, rank=rank, workers=workers,
                                         image_weights=image_weights, quad=quad, prefix=prefix, shuffle=shuffle,
                                         seed=seed)  # fmt: skip
        if not augment or rect or image_weights or quad or rank != -1:
            return y5_loader, y5_dataset
        aug = yaml.safe_load((Path(CONF_DIR) / "augment" / "default.yaml").read_text())
        labels = load_labels(y5_dataset.im_files, None, nc=None, single_cls=single_cls, log_report=False)
        ours = YoloDataset(labels, imgsz=imgsz, rendering=aug, batch_size=batch_size, hyp=hyp, augment=True,
                           rect=False, stride=int(stride), seed=seed, epochs=epochs, close_mosaic=0,
                           cache=cache or None, workers=y5_loader.num_workers)  # fmt: skip
        sampler = EpochSampler(len(ours), shuffle=shuffle, seed=seed)
        nw = y5_loader.num_workers
        loader = DataLoader(ours, batch_size=batch_size, sampler=sampler, num_workers=nw,
                            pin_memory=torch.cuda.is_available(), collate_fn=YoloDataset.collate_fn,
                            persistent_workers=nw > 0,
                            worker_init_fn=init_loader_worker if nw > 0 else None)  # fmt: skip
        print(f"yolov5_ourdata: training batches from our loader ({len(ours)} images, {nw} workers)", flush=True)
        return EpochLoader(loader, sampler), y5_dataset

    train_module.create_dataloader = create_dataloader


def main() -> None:
    import yolov5.train as train_module

    patch(train_module)
    opt = train_module.parse_opt(known=True)
    train_module.main(opt)


if __name__ == "__main__":
    main()
