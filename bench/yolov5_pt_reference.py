"""Make the YOLOv5 7.0 ``.pt`` files and reference outputs that tests/test_yolov5_weights.py reads.

Run in YOLOv5's environment (never ours): ``bench/yolov5_env.sh && bench/.venv-yolov5/bin/python
bench/yolov5_pt_reference.py``. YOLOv5's own train.py trains a tiny model (the lock-step width, 3 classes) for two
epochs on the lock-step images at 64 px and writes into ``tests/data/yolov5_pt/``:

- ``running.pt``: its ``last.pt`` after the first epoch, as a run in progress leaves it (raw weights in ``model``,
  the EMA in ``ema``, optimizer state);
- ``final.pt``: its ``last.pt`` at the end, after YOLOv5's ``strip_optimizer`` (the EMA as ``model``, ``ema`` None),
  as released weights such as ``yolov5s.pt`` are;
- ``reference.pt``: a fixed input and, per file, YOLOv5's own outputs on it (eval mode, float32): what YOLOv5's
  loader uses for val/detect (``ema`` or else ``model``) and what its train.py transfers (``model``), and YOLOv5
  val.py's P, R, mAP@0.5 and mAP@0.5:0.95 of ``final.pt`` on the 16 images at 64 px.

Only numbers are stored, no YOLOv5 code (the ``.pt`` files name YOLOv5's classes, as every YOLOv5 weight file does).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import yolov5_env  # noqa: E402
from lockstep_reference import model_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "yolov5_pt"
IMAGES = ROOT / "tests" / "data" / "lockstep"  # 16 PNGs of 64 px, 3 classes, with YOLO labels
NAMES = ["r", "g", "b"]


def outputs(model, x):
    """YOLOv5's eval-mode outputs: the decoded ``(bs, N, 5 + nc)`` and the raw per-level list."""
    import torch

    model = model.float().eval()
    with torch.no_grad():
        decoded, raw = model(x)
    return {"decoded": decoded, "raw": list(raw)}


def main() -> None:
    import os

    work = Path(tempfile.mkdtemp(prefix="yolov5-pt-"))
    os.environ.update(yolov5_env(work))
    import torch
    from yolov5 import train as y5train
    from yolov5.utils.callbacks import Callbacks

    data = work / "data"
    shutil.copytree(IMAGES / "images", data / "images")
    shutil.copytree(IMAGES / "labels", data / "labels")
    (work / "data.yaml").write_text(
        yaml.safe_dump({"path": str(data), "train": "images", "val": "images", "names": NAMES})
    )
    model_yaml(work / "model.yaml")
    OUT.mkdir(parents=True, exist_ok=True)

    def keep_first(last, epoch, final_epoch, best_fitness, fi):
        if epoch == 0:
            shutil.copy(last, OUT / "running.pt")

    callbacks = Callbacks()
    callbacks.register_action("on_model_save", callback=keep_first)
    opt = y5train.parse_opt(True)
    opt.data, opt.cfg, opt.weights = str(work / "data.yaml"), str(work / "model.yaml"), ""
    opt.imgsz, opt.batch_size = 64, 8
    opt.epochs, opt.workers, opt.seed, opt.noplots, opt.exist_ok = 2, 0, 0, True, True
    opt.project, opt.name = str(work / "runs"), "tiny"
    y5train.main(opt, callbacks)
    shutil.copy(work / "runs" / "tiny" / "weights" / "last.pt", OUT / "final.pt")

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = {"input": x}
    for name in ("running", "final"):
        ckpt = torch.load(OUT / f"{name}.pt", map_location="cpu", weights_only=False)  # YOLOv5's env, its own file
        reference[name] = {
            "inference": outputs(ckpt.get("ema") or ckpt["model"], x),  # YOLOv5's attempt_load choice
            "transfer": outputs(ckpt["model"], x),  # train.py --weights: ckpt['model']
            "nc": int(ckpt["model"].nc),
            "n_tensors": len(ckpt["model"].state_dict()),
        }
    from yolov5 import val as y5val

    (mp, mr, map50, map_, *_), *_ = y5val.run(
        data=str(work / "data.yaml"), weights=str(OUT / "final.pt"), imgsz=64, batch_size=16, device="cpu",
        workers=0, half=False, plots=False, project=str(work / "val"),
    )  # fmt: skip
    reference["final"]["val"] = {
        "precision": float(mp),
        "recall": float(mr),
        "mAP_0.5": float(map50),
        "mAP_0.5:0.95": float(map_),
    }
    torch.save(reference, OUT / "reference.pt")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
