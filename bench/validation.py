"""Validation time: the folded copy that validation runs (val.fuse_bn; with ``--channels-last`` also NHWC,
val.channels_last) against the plain model, alternated in one process on the same checkpoint and data.

    .venv/bin/python bench/validation.py --ckpt outputs/train/<run>/weights/last.ckpt [--data bench] [--rounds 4]

Each round validates once with the copy and once without (Lightning's ``trainer.validate``: the loader, forward,
loss, NMS, matching and metrics; the COCO pass off), and prints the wall time of both, their ratio and the largest
difference between the metrics of the two. ``--data`` is ``bench`` (512 JPEGs of 240-480 px, as bench/dataloader.py
makes them), ``shapes``, or a YOLOv5 data yaml; default: the checkpoint's own. ``--imgsz`` defaults to the run's.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from detector.checkpoint_file import load_checkpoint, model_from_checkpoint  # noqa: E402
from detector.data.config import load_data_config  # noqa: E402
from detector.train import build_datamodule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--channels-last", action="store_true", help="the copy NHWC too (val.channels_last=true)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    module, run = model_from_checkpoint(load_checkpoint(args.ckpt))
    data_name = run.data if args.data is None else args.data
    if data_name == "bench":
        from dataloader import bench_dataset

        root = Path(os.environ.get("DETECTOR_DATASETS", "~/.cache/detector/datasets")).expanduser()
        data_name = str(bench_dataset(root / "bench-240-480"))
    data = load_data_config(data_name, run.datasets_dir, os.getcwd())
    out = Path("outputs") / "bench-validation"
    imgsz = int(args.imgsz or run.imgsz)
    datamodule = build_datamodule(run, data, stride=int(module.model.stride.max()), workers=args.workers,
                                  report_dir=out, cache=None, imgsz=imgsz)  # fmt: skip
    module.val_cfg["coco"] = "never"
    print(f"{args.ckpt}, data {data_name}, imgsz {imgsz}, torch threads {torch.get_num_threads()}")
    copy = "folded NHWC" if args.channels_last else "folded"
    print(f"{'round':>5} {copy:>12} {'plain':>8} {'ratio':>6} {'max metric diff':>16}")
    ratios = []
    for r in range(args.rounds):
        times, metrics = {}, {}
        for fold in (True, False):
            module.val_cfg.update(fuse_bn=fold, channels_last=fold and args.channels_last)
            trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=str(out))  # fmt: skip
            start = time.perf_counter()
            metrics[fold] = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
            times[fold] = time.perf_counter() - start
        diff = max(abs(metrics[True][k] - metrics[False][k]) for k in metrics[False])
        ratios.append(times[True] / times[False])
        print(f"{r:>5} {times[True]:>11.2f}s {times[False]:>7.2f}s {ratios[-1]:>6.3f} {diff:>16.2e}", flush=True)
    print(f"{copy} / plain: mean {statistics.mean(ratios):.3f} over {args.rounds} rounds")


if __name__ == "__main__":
    main()
