"""Where a training sample's time goes: ours (YOLOv5's path, the default) against YOLOv5 7.0's LoadImagesAndLabels.

    .venv/bin/python bench/loader_profile.py [--data bench] [--imgsz 640] [--samples 300]
    PYTHONPATH=src bench/.venv-yolov5/bin/python bench/loader_profile.py --trainer yolov5 [same options]

One process, no workers, one thread: ``dataset[i]`` for ``--samples`` indices timed, then again under cProfile, after 20
untimed ones. Prints ms per sample in total and in OpenCV's kernels (JPEG decode, resize, warp, colour conversion, LUT).
Those kernels, run on the same pixels with the same arguments, must stay bit-exact with YOLOv5's: their sum is the
floor of any loader that keeps YOLOv5's images, so ``YOLOv5 total / our floor`` bounds the speed-up it can have.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
KERNELS = ("imdecode", "imread", "resize", "warpAffine", "warpPerspective", "cvtColor", "LUT", "split", "merge")


def build(trainer: str, data_yaml: str, imgsz: int, hyp: dict):
    data = yaml.safe_load(Path(data_yaml).read_text())
    train = str(Path(data.get("path", Path(data_yaml).parent)) / data["train"])
    if trainer == "yolov5":
        from yolov5.utils.dataloaders import LoadImagesAndLabels

        return LoadImagesAndLabels(train, imgsz, 16, augment=True, hyp=hyp, rect=False, stride=32)
    from detector import CONF_DIR
    from detector.data.albumentations_extras import AlbumentationsExtras
    from detector.data.config import img2label_paths, list_image_files
    from detector.data.dataset import YoloDataset
    from detector.data.labels import default_cache_path, load_labels

    im_files = list_image_files(train)
    labels = load_labels(im_files, default_cache_path(train, img2label_paths(im_files[:1])), nc=len(data["names"]))
    aug = yaml.safe_load((Path(CONF_DIR) / "augment" / "default.yaml").read_text())
    return YoloDataset(labels, imgsz=imgsz, batch_size=16, hyp=hyp, augment=True, rect=False, stride=32, seed=0,
                       epochs=300, close_mosaic=0, cache=None, workers=0,
                       albumentations=AlbumentationsExtras(aug.get("albumentations")), rendering=aug)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trainer", choices=["detector", "yolov5"], default="detector")
    ap.add_argument("--data", default="bench", help="bench (512 JPEGs, 240-480 px) or a dataset yaml")
    ap.add_argument("--datasets-dir", default=os.environ.get("DETECTOR_DATASETS", "~/.cache/detector/datasets"))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--top", type=int, default=0, help="also print the N functions with the most own time")
    args = ap.parse_args()

    import cv2
    import torch

    cv2.setNumThreads(0)  # one thread, as in a loader worker
    torch.set_num_threads(1)
    from dataloader import CONF, bench_dataset

    data = args.data
    if data == "bench":
        data = str(bench_dataset(Path(args.datasets_dir).expanduser() / "bench-240-480"))
    hyp = yaml.safe_load((CONF / "hyp" / "scratch-low.yaml").read_text())
    ds = build(args.trainer, data, args.imgsz, hyp)
    n = len(ds)
    for i in range(20):
        ds[i % n]
    t0 = time.perf_counter()
    for i in range(20, 20 + args.samples):
        ds[i % n]
    plain = (time.perf_counter() - t0) / args.samples * 1000
    prof = cProfile.Profile()
    prof.enable()
    for i in range(20, 20 + args.samples):
        ds[i % n]
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(tt for (_, _, tt, _, _) in stats.values())
    per = {k: 0.0 for k in KERNELS}
    for (_, _, name), (_, _, tt, _, _) in stats.items():
        short = name.strip("<>").split()[-1].split(".")[-1]  # "<built-in method cv2.resize>", "<resize>"
        if short in per:
            per[short] += tt
    ms = 1000 / args.samples
    floor = sum(per.values())
    print(f"{args.trainer}: {data}, imgsz {args.imgsz}, {args.samples} samples, one thread")
    print(f"  {plain:.2f} ms/sample; profiled: total {total * ms:.2f}, OpenCV kernels {floor * ms:.2f} ms/sample: "
          + ", ".join(f"{k} {v * ms:.2f}" for k, v in per.items() if v))  # fmt: skip
    if args.top:
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
