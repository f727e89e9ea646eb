"""One fixed trained YOLOv5 model's loss on training samples from YOLOv5 7.0's loader and from ours.

    PYTHONPATH=src bench/.venv-yolov5/bin/python bench/loader_loss.py --ckpt RUN/weights/last.pt --data large-images

Random draws cannot be matched between the loaders, but a trained model is a sensitive probe of what a sample
teaches: labels that sit off their pixels, boxes that are harder or easier, other image statistics all move its
loss. The model (a YOLOv5 ``.pt``, e.g. from bench/accuracy.py's YOLOv5 runs) runs in train mode with BatchNorm
frozen, on ``--samples`` random mosaics of each loader at ``--imgsz``; prints box/obj/cls loss with standard errors.
Equal means within their errors: the loaders give samples of the same difficulty.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="a YOLOv5 .pt (its 'model' entry is used)")
    parser.add_argument("--data", default="large-images", help="as bench/accuracy.py's --data")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--samples", type=int, default=3200)
    parser.add_argument("--cache", choices=["ram", "disk"], help="image cache of both loaders (default: none)")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    import random

    import torch
    import yaml
    import yolov5
    from pipeline_parity import build
    from yolov5.utils.loss import ComputeLoss

    torch.set_num_threads(1)
    hyp = yaml.safe_load((Path(yolov5.__file__).parent / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    y5, _, ours, _ = build(args.imgsz, hyp, args.data, args.cache)
    model = torch.load(args.ckpt, map_location="cpu", weights_only=False)["model"].float().train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # fixed statistics: the probe must not adapt to either loader's batches
    compute_loss = ComputeLoss(model)
    random.seed(args.seed)
    np.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)

    def losses(sample) -> np.ndarray:
        out = []
        for b in range(args.samples // 16):
            items = [sample(b * 16 + k) for k in range(16)]
            ims = torch.stack([im for im, _ in items]).float() / 255
            targets = []
            for k, (_, lb) in enumerate(items):
                lb = lb.clone()
                lb[:, 0] = k
                targets.append(lb)
            with torch.no_grad():
                out.append(compute_loss(model(ims), torch.cat(targets))[1].numpy())
        return np.array(out)

    def theirs(_: int):
        return y5[int(rng.integers(y5.n))][:2]

    def ours_sample(k: int):
        return ours[(int(rng.integers(ours.n)), 500 + k // ours.n)][:2]  # epochs no run reaches

    for name, x in (("yolov5 loader", losses(theirs)), ("our loader", losses(ours_sample))):
        se = x.std(0) / np.sqrt(len(x))
        cells = [f"{c} {m:.5f} ± {s:.5f}" for c, m, s in zip(("box", "obj", "cls"), x.mean(0), se, strict=True)]
        print(f"{name:14s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
