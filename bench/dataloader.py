"""Images/second of the training data pipeline (mosaic, perspective, HSV, flips, albumentations extras).

    .venv/bin/python bench/dataloader.py     # built-in dataset, then 512 JPEGs of 240-480 px; 640/320, 0/2 workers
    .venv/bin/python bench/dataloader.py --data shapes      # the built-in dataset only (128-256 px images)
    .venv/bin/python bench/dataloader.py --data path/to/data.yaml --imgsz 640 --workers 4 --batches 50
    PYTHONPATH=src bench/.venv-yolov5/bin/python bench/dataloader.py --trainer yolov5   # YOLOv5 7.0's loader

``bench`` is 512 generated JPEGs of 240-480 px per side (made once in the datasets folder), the image set the
issue names for YOLOv5 7.0's loader. Uses hyp scratch-low and conf/augment/default.yaml; one warm-up batch, then
times a fixed number of batches. Compare with another loader only on the same machine in the same session.
``--trainer yolov5`` times YOLOv5 7.0's ``create_dataloader`` (same hyp, images, batch and workers) in its bench
environment (bench/yolov5_env.sh); ``--one-pass``/``--no-one-pass`` override conf's path for ours.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import yaml

from detector import CONF_DIR
from detector.data.shapes import CLASSES, render_sample

CONF = Path(CONF_DIR)


def time_batches(loader, batches: int, restart) -> float:
    """Images per second over ``batches`` batches of ``loader`` after one warm-up batch; ``restart(epoch)``
    gives the next epoch's iterator when one ends."""
    n, epoch, seen = 0, 0, 0
    it = iter(loader)
    next(it)  # warm-up (starts the workers)
    t0 = time.perf_counter()
    while n < batches:
        try:
            seen += len(next(it)[0])
        except StopIteration:
            epoch += 1
            it = restart(epoch)
            continue
        n += 1
    return seen / (time.perf_counter() - t0)


def measure(dataset, batch: int, workers: int, batches: int, seed: int = 0) -> float:
    """Images per second of our loader over ``batches`` batches after one warm-up batch."""
    from torch.utils.data import DataLoader

    from detector.data.datamodule import init_loader_worker
    from detector.data.dataset import YoloDataset
    from detector.data.sampler import EpochSampler

    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=EpochSampler(len(dataset), shuffle=True, seed=seed),
        num_workers=workers,
        collate_fn=YoloDataset.collate_fn,
        persistent_workers=workers > 0,
        worker_init_fn=init_loader_worker if workers > 0 else None,
    )

    def restart(epoch: int):
        loader.sampler.set_epoch(epoch)
        return iter(loader)

    return time_batches(loader, batches, restart)


def measure_yolov5(path: str, imgsz: int, hyp: dict, batch: int, workers: int, batches: int) -> float:
    """Images per second of YOLOv5 7.0's training loader (its bench environment) over ``batches`` batches."""
    import cv2
    from yolov5.utils.dataloaders import create_dataloader

    cv2.setNumThreads(0)  # as YOLOv5's train.py does on import (utils/general.py)
    loader, _ = create_dataloader(path, imgsz, batch, 32, hyp=hyp, augment=True, workers=workers, shuffle=True)
    return time_batches(loader, batches, lambda _: iter(loader))  # InfiniteDataLoader never ends


def bench_dataset(root: Path, n: int = 512, long_side: tuple[int, int] = (240, 480)) -> Path:
    """n shapes JPEGs with 240-480 px sides in YOLOv5 layout under root (made once); returns the data yaml."""
    yaml_file = root / "data.yaml"
    if yaml_file.exists():
        return yaml_file
    import cv2
    import numpy as np

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, labels, _ = render_sample(np.random.default_rng([7, i]), long_side=long_side)
        cv2.imwrite(str(root / "images" / f"{i:04d}.jpg"), img)
        rows = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
        (root / "labels" / f"{i:04d}.txt").write_text("\n".join(rows))
    spec = {"path": str(root), "train": "images", "val": "images", "names": list(CLASSES)}
    yaml_file.write_text(yaml.safe_dump(spec))
    return yaml_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["shapes", "bench"],
                    help="shapes (built-in), bench (512 JPEGs, 240-480 px) or dataset yamls")  # fmt: skip
    ap.add_argument("--datasets-dir", default=os.environ.get("DETECTOR_DATASETS", "~/.cache/detector/datasets"))
    ap.add_argument("--imgsz", type=int, nargs="+", default=[640, 320])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=30, help="timed batches per setting")
    ap.add_argument("--hyp", default=str(CONF / "hyp" / "scratch-low.yaml"))
    ap.add_argument("--augment", default=str(CONF / "augment" / "default.yaml"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--trainer", choices=["detector", "yolov5"], default="detector")
    ap.add_argument("--one-pass", action=argparse.BooleanOptionalAction, default=None, help="ours: augment.one_pass")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    for spec in args.data:
        run(spec, args)


def run(spec: str, args: argparse.Namespace) -> None:
    """Print the throughput for one dataset at every imgsz and worker count asked for."""
    if spec == "bench":
        spec = str(bench_dataset(Path(args.datasets_dir).expanduser() / "bench-240-480"))
    elif spec == "shapes":
        from detector.data.shapes import ensure_shapes_dataset

        spec = str(ensure_shapes_dataset(Path(args.datasets_dir).expanduser() / "shapes"))
    hyp = yaml.safe_load(Path(args.hyp).read_text())
    if args.trainer == "yolov5":
        data = yaml.safe_load(Path(spec).read_text())
        train = str(Path(data.get("path", Path(spec).parent)) / data["train"])
        print(f"data: {spec}, YOLOv5 7.0 create_dataloader, batch {args.batch_size}, torch threads {args.threads}")
        for imgsz in args.imgsz:
            for workers in args.workers:
                ips = measure_yolov5(train, imgsz, hyp, args.batch_size, workers, args.batches)
                print(f"imgsz {imgsz:4d}  workers {workers}: {ips:7.1f} img/s", flush=True)
        return
    from detector.data.albumentations_extras import AlbumentationsExtras
    from detector.data.config import img2label_paths, list_image_files, load_data_config
    from detector.data.dataset import YoloDataset
    from detector.data.labels import default_cache_path, load_labels

    data = load_data_config(spec, args.datasets_dir, os.getcwd())
    im_files = list_image_files(data.train)
    labels = load_labels(im_files, default_cache_path(data.train, img2label_paths(im_files[:1])), nc=data.nc)
    aug = yaml.safe_load(Path(args.augment).read_text())
    if args.one_pass is not None:
        aug["one_pass"] = args.one_pass
    extras = AlbumentationsExtras(aug.get("albumentations"))
    print(f"data: {data.yaml_file} ({len(labels.im_files)} train images), batch {args.batch_size}, "
          f"torch threads {args.threads}, one_pass {aug['one_pass']}, extras: {extras}")  # fmt: skip
    for imgsz in args.imgsz:
        ds = YoloDataset(
            labels,
            imgsz=imgsz,
            batch_size=args.batch_size,
            hyp=hyp,
            augment=True,
            rect=False,
            stride=32,
            seed=0,
            epochs=300,
            close_mosaic=0,
            cache=None,
            workers=2,
            albumentations=extras,
            rendering=aug,
        )
        for workers in args.workers:
            ips = measure(ds, args.batch_size, workers, args.batches)
            print(f"imgsz {imgsz:4d}  workers {workers}: {ips:7.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
