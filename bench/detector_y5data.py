"""Our trainer fed by YOLOv5 7.0's own training loader: the reverse of bench/yolov5_ourdata.py (issue 8).

    .venv/bin/python bench/detector_y5data.py <our train.py overrides>
    .venv/bin/python bench/accuracy.py ... --trainers yolov5 detector detector-y5data   # the same, side by side

Everything but the training batches is ours: model, loss, optimizer, schedule, EMA, validation (our validation
loader), AutoAnchor. The batches come from YOLOv5's ``create_dataloader`` (its dataset, mosaic, augmentation, its
seeded sampler and worker streams, ``cache`` and ``workers`` as ours are set), imported from ``bench/.venv-yolov5``
(made by bench/yolov5_env.sh) after our own packages, so that torch, numpy and OpenCV stay ours. If our trainer
learns as YOLOv5 does on YOLOv5's batches and as it does now on ours, a gap lies in our data; if it learns as it
does now on both, in our trainer. Never imported by the product; YOLOv5 is never a dependency.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def yolov5_site_packages() -> str:
    found = glob.glob(str(ROOT / "bench" / ".venv-yolov5" / "lib" / "python3*" / "site-packages"))
    if not found:
        sys.exit("YOLOv5 7.0 is not installed: run bench/yolov5_env.sh first")
    return found[0]


def patch() -> None:
    """Wrap detector.train.build_datamodule: the training loader becomes YOLOv5's (validation stays ours)."""
    import detector.train as train

    original = train.build_datamodule

    def build_datamodule(cfg, data, stride, **overrides):
        dm = original(cfg, data, stride, **overrides)
        if overrides:  # a validation-only build (val command): leave it alone
            return dm
        state = {}

        def train_dataloader():
            if "loader" not in state:  # one persistent loader, as YOLOv5's InfiniteDataLoader is meant to be used
                from yolov5.utils.dataloaders import create_dataloader

                hyp = {k: float(v) for k, v in cfg.hyp.items() if v is not None}  # anchors: null
                loader, _ = create_dataloader([str(p) for p in data.train], int(cfg.imgsz), int(cfg.batch_size),
                                              int(stride), hyp=hyp, augment=True, cache=cfg.cache, rect=False, rank=-1,
                                              workers=8 if cfg.workers == "auto" else int(cfg.workers),
                                              shuffle=True, seed=int(cfg.seed), prefix="yolov5 loader: ")  # fmt: skip
                state["loader"] = loader
                print(f"detector_y5data: training batches from YOLOv5's loader ({len(loader)} batches, "
                      f"{loader.num_workers} workers)", flush=True)  # fmt: skip
            return state["loader"]

        dm.train_dataloader = train_dataloader
        return dm

    train.build_datamodule = build_datamodule


def main() -> None:
    os.environ.update(YOLOv5_AUTOINSTALL="false", YOLO_OFFLINE="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    sys.path.append(yolov5_site_packages())  # after ours: torch, numpy, cv2 stay this environment's
    patch()
    import detector.train as train

    sys.argv[0] = "detector.train"
    train.main()


if __name__ == "__main__":
    main()
