"""Make the AMP check's built-in model state and image (src/detector/assets/amp_check.pt).

A narrow yolov5 is fitted to a handful of built-in `shapes` images until it detects every object of the check's image
with high confidence, so that the check compares real detections (an untrained model has none, and a check on it
passes whatever the device computes). Run once: ``.venv/bin/python tools/make_amp_check_asset.py``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from detector.data.letterbox import letterbox
from detector.data.shapes import CLASSES, render_sample
from detector.loss import YoloLoss, scale_loss_gains
from detector.models import DetectionModel
from detector.nms import non_max_suppression

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "detector" / "assets" / "amp_check.pt"
IMGSZ, N_IMAGES, STEPS = 128, 8, 600
MODEL = {"depth_multiple": 0.33, "width_multiple": 0.125}


def images() -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, IMGSZ, IMGSZ) uint8 RGB letterboxed shapes images and their (n, 6) [image, cls, x, y, w, h] targets."""
    ims, targets = [], []
    k = 0
    seed = 0
    while k < N_IMAGES:
        img, labels, _ = render_sample(np.random.default_rng([2026, seed]), long_side=(IMGSZ, IMGSZ), max_objects=4)
        seed += 1
        if len(labels) < 2:
            continue
        boxed, (rw, rh), (dw, dh) = letterbox(img, IMGSZ)
        h, w = img.shape[:2]
        lab = labels.copy()
        lab[:, 1] = (lab[:, 1] * w * rw + dw) / IMGSZ
        lab[:, 2] = (lab[:, 2] * h * rh + dh) / IMGSZ
        lab[:, 3] *= w * rw / IMGSZ
        lab[:, 4] *= h * rh / IMGSZ
        ims.append(torch.from_numpy(boxed[..., ::-1].transpose(2, 0, 1).copy()))
        targets.append(torch.cat([torch.full((len(lab), 1), float(k)), torch.from_numpy(lab).float()], 1))
        k += 1
    return torch.stack(ims), torch.cat(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.manual_seed(0)
    arch = yaml.safe_load((ROOT / "conf" / "model" / "arch" / "yolov5.yaml").read_text())
    model_cfg = {**MODEL, **{k: arch[k] for k in ("anchors", "backbone", "head")}}
    nc = len(CLASSES)
    model = DetectionModel(model_cfg, nc=nc)
    hyp = yaml.safe_load((ROOT / "conf" / "hyp" / "scratch-low.yaml").read_text())
    loss_fn = YoloLoss(model, scale_loss_gains(hyp, model.detect.nl, nc, IMGSZ), 0.0)
    ims, targets = images()
    x = ims.float() / 255
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=STEPS)
    model.train()
    for step in range(STEPS):
        loss, items = loss_fn(model(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            logging.info("step %d loss %s", step, items.tolist())
    model.eval()
    with torch.inference_mode():
        dets = non_max_suppression(model(x[:1])[0], conf_thres=0.25, iou_thres=0.45, max_det=300)[0]
    truth = targets[targets[:, 0] == 0]
    logging.info("image 0: %d objects, %d detections %s", len(truth), len(dets), dets[:, 4:].tolist())
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": model_cfg, "nc": nc, "state": state, "image": ims[0].clone(), "labels": truth[:, 1:].clone()},
        args.out,
    )
    logging.info("wrote %s (%d bytes)", args.out, args.out.stat().st_size)


if __name__ == "__main__":
    main()
