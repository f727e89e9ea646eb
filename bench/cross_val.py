"""YOLOv5 7.0's own val.py on checkpoints of both trainers: is a gap in mAP in the weights or in the metric?

    .venv/bin/python bench/cross_val.py export OUT_DIR RUN_DIR...           # ours: EMA weights of weights/last.ckpt
    bench/.venv-yolov5/bin/python bench/cross_val.py export OUT_DIR RUN_DIR...  # YOLOv5's: weights/last.pt
    bench/.venv-yolov5/bin/python bench/cross_val.py eval --data D --imgsz 160 OUT_DIR/*.sd

Both models share parameter names (``model.N...``), so a plain state dict of either loads into YOLOv5's yolov5n
(``eval``, in YOLOv5's environment) and is validated by ``val.run`` as YOLOv5 validates during training (batch 32,
conf 0.001, IoU 0.6, rect batches with pad 0.5). Prints P, R, mAP@0.5 and mAP@0.5:0.95 per file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def export(out: Path, runs: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        ours = run / "weights" / "last.ckpt"
        if ours.exists():  # our EMA weights are the checkpoint's state_dict (raw weights beside them)
            state = torch.load(ours, map_location="cpu", weights_only=True)["state_dict"]
            sd = {k.removeprefix("model."): v for k, v in state.items()}
        else:  # YOLOv5's last.pt pickles the EMA model itself: YOLOv5's environment only
            ckpt = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)
            sd = (ckpt.get("ema") or ckpt["model"]).float().state_dict()
        dst = out / f"{run.name}.sd"
        torch.save({k: v.clone() for k, v in sd.items()}, dst)
        print(f"{run} -> {dst}")


def evaluate(data: str, imgsz: int, files: list[Path], cfg: str) -> None:
    from yolov5 import val
    from yolov5.models.yolo import Model

    results = {}
    for f in files:
        sd = torch.load(f, map_location="cpu", weights_only=True)
        nc = sd["model.24.m.0.weight"].shape[0] // 3 - 5
        model = Model(str(Path(val.__file__).parent / "models" / f"{cfg}.yaml"), ch=3, nc=nc)
        model.load_state_dict(sd)
        model.nc, model.names = nc, {i: str(i) for i in range(nc)}
        weights = f.resolve().with_suffix(".yolov5.pt")
        torch.save({"model": model.half(), "epoch": -1}, weights)
        (p, r, map50, map_, *_), *_ = val.run(data=data, weights=str(weights), batch_size=32, imgsz=imgsz,
                                               conf_thres=0.001, iou_thres=0.6, device="cpu", plots=False,
                                               project=str(f.parent / "val"), name=f.stem, exist_ok=True)  # fmt: skip
        results[f.name] = {"P": float(p), "R": float(r), "mAP_0.5": float(map50), "mAP_0.5:0.95": float(map_)}
        print(f"{f.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[f.name].items()), flush=True)
    (files[0].parent / "cross_val.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("out", type=Path)
    ex.add_argument("runs", type=Path, nargs="+")
    ev = sub.add_parser("eval")
    ev.add_argument("--data", required=True)
    ev.add_argument("--imgsz", type=int, default=160)
    ev.add_argument("--cfg", default="yolov5n")
    ev.add_argument("files", type=Path, nargs="+")
    args = ap.parse_args()
    if args.mode == "export":
        export(args.out, args.runs)
    else:
        from accuracy import yolov5_env

        os.environ.update(yolov5_env(args.files[0].parent))
        evaluate(args.data, args.imgsz, args.files, args.cfg)


if __name__ == "__main__":
    main()
