"""Loss and gradient parity with YOLOv5 7.0 on real training batches, at any model state (not only at init).

    PYTHONPATH=src bench/.venv-yolov5/bin/python bench/loss_parity.py [--ckpt outputs/train/<run>/weights/last.ckpt]

Runs in YOLOv5's environment with our src/ on the path (our loss and model need no Lightning). Builds YOLOv5's
yolov5n and ours with the same weights (initial, or a checkpoint of ours), takes augmented batches from YOLOv5's own
training loader (hyp scratch-low) on the built-in data, and computes, in float64, YOLOv5's ComputeLoss and our
YoloLoss with their gradients. Prints per batch the relative differences of (box, obj, cls) and the largest per-tensor
relative gradient difference. The lock-step test covers the first steps of a tiny run; this covers trained weights,
mosaics with many and clipped boxes, and the real image size.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def yolov5_parts(imgsz: int, nc: int, batch: int, data_yaml: Path, seed: int):
    """YOLOv5's Model, ComputeLoss class, hyp (scaled as train.py scales it) and training loader."""
    import yaml
    import yolov5
    from yolov5.models.yolo import Model
    from yolov5.utils.dataloaders import create_dataloader
    from yolov5.utils.general import init_seeds
    from yolov5.utils.loss import ComputeLoss

    root = Path(yolov5.__file__).parent
    hyp = yaml.safe_load((root / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    init_seeds(seed)
    model = Model(str(root / "models" / "yolov5n.yaml"), ch=3, nc=nc)
    nl = model.model[-1].nl
    scaled = dict(hyp)
    scaled["box"] *= 3 / nl
    scaled["cls"] *= nc / 80 * 3 / nl
    scaled["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    scaled["label_smoothing"] = 0.0
    model.nc, model.hyp = nc, scaled
    data = yaml.safe_load(data_yaml.read_text())
    train = str(Path(data["path"]) / data["train"])
    loader, _ = create_dataloader(train, imgsz, batch, 32, hyp=hyp, augment=True, workers=0, shuffle=True, seed=seed)
    return model, ComputeLoss, hyp, loader


def ours(model_yaml: Path, nc: int, hyp: dict, imgsz: int):
    import yaml

    from detector.loss import YoloLoss, scale_loss_gains
    from detector.models import DetectionModel

    cfg = yaml.safe_load((model_yaml.parent / "arch" / "yolov5.yaml").read_text())
    cfg |= {k: v for k, v in yaml.safe_load(model_yaml.read_text()).items() if k != "defaults"}
    model = DetectionModel(cfg, nc)
    return model, lambda m: YoloLoss(m, scale_loss_gains(hyp, m.detect.nl, nc, imgsz), 0.0)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="a checkpoint of ours (default: YOLOv5's init)")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("YOLOv5_VERBOSE", "False")
    from accuracy import resolve_data

    from detector import CONF_DIR

    data_yaml = resolve_data("shapes")
    nc = 6
    y5_model, ComputeLoss, hyp, loader = yolov5_parts(args.imgsz, nc, args.batch, data_yaml, args.seed)
    our_model, our_loss = ours(Path(CONF_DIR) / "model" / "yolov5n.yaml", nc, hyp, args.imgsz)
    state = y5_model.state_dict()
    if args.ckpt is not None:
        sd = torch.load(args.ckpt, map_location="cpu", weights_only=False)["state_dict"]
        state = {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
    y5_model.load_state_dict(state)
    our_model.load_state_dict(state)
    y5_model.double().train()
    our_model.double().train()
    y5_loss, o_loss = ComputeLoss(y5_model), our_loss(our_model)
    print(f"state: {args.ckpt or 'YOLOv5 init'}; imgsz {args.imgsz}, batch {args.batch}, float64")
    print("batch  targets   rel diff box       obj        cls    | max rel grad diff (tensor)")
    worst = 0.0
    for i, (imgs, targets, _, _) in enumerate(loader):
        if i == args.batches:
            break
        x = imgs.double() / 255
        for m in (y5_model, our_model):
            m.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        l5, items5 = y5_loss(y5_model(x), targets.double())
        l5.backward()
        lo, itemso = o_loss(our_model(x), targets.double())
        lo.backward()
        g5, go = grads(y5_model), grads(our_model)
        rel = np.abs(itemso.numpy() - items5.numpy()) / np.maximum(np.abs(items5.numpy()), 1e-300)
        diffs = {k: float((go[k] - g5[k]).norm() / max(float(g5[k].norm()), 1e-300)) for k in g5}
        k = max(diffs, key=diffs.get)
        worst = max(worst, float(rel.max()), diffs[k])
        print(f"{i:5d}  {len(targets):7d}   {rel[0]:.1e}   {rel[1]:.1e}   {rel[2]:.1e} | {diffs[k]:.1e} ({k})")
    print(f"largest relative difference: {worst:.1e}")


if __name__ == "__main__":
    main()
