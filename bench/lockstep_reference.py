"""Record YOLOv5 7.0's own training steps for the lock-step parity test (tests/test_lockstep.py).

Run in YOLOv5's environment (never ours): ``bench/yolov5_env.sh && bench/.venv-yolov5/bin/python
bench/lockstep_reference.py [--optimizer AdamW]``. It writes a tiny dataset (16 PNGs of 64 px, 3 classes) and YOLOv5's
record of a 120-iteration float64 run on it to ``tests/data/lockstep/``: the initial weights, every batch (names,
targets), for the first 48 iterations after every batch the losses, lr and momentum per group, accumulation, whether it
stepped, the gradient norm before clipping, and per-tensor sums of the weights and of the EMA weights, and for all 120
(past warmup's 100) the schedule alone: lr and momentum per group and whether it stepped. Augmentation is off, so the
test can rebuild each batch from the PNGs and replay it through our Trainer. Only numbers are stored, no YOLOv5 code.
With ``--optimizer Adam|AdamW`` it writes only that run's records (``reference_adamw.pt``): the initial weights and
batches are the SGD record's, which it checks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "lockstep"
N_IMAGES, IMGSZ, NC = 16, 64, 3
KEEP = 48  # iterations stored: chaos lifts float64 noise above 1e-6 near iteration 50 (see HYP)
SETTINGS = dict(batch_size=16, epochs=120, seed=0, width_multiple=0.0625, depth_multiple=0.33, optimizer="SGD")
# scratch-low with every augmentation off (a batch is then a pure function of its image names) and lr0 and
# warmup_bias_lr a tenth of it: early YOLOv5 training is chaotic (a 1e-13 change in one lr reaches 40% in the
# weights within 24 iterations at scratch-low's lr, in float64), so lock-step beyond a few steps needs a calmer run.
HYP = {
    "lr0": 0.001, "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 3.0,
    "warmup_momentum": 0.8, "warmup_bias_lr": 0.01, "box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0,
    "obj_pw": 1.0, "iou_t": 0.2, "anchor_t": 4.0, "fl_gamma": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0,
    "degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0, "perspective": 0.0, "flipud": 0.0,
    "fliplr": 0.0, "mosaic": 0.0, "mixup": 0.0, "copy_paste": 0.0,
}  # fmt: skip


def make_dataset(root: Path) -> None:
    """16 smooth 64 px images with 1-4 filled rectangles each (3 classes) and their YOLO labels."""
    import cv2

    rng = np.random.default_rng(2026)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:IMGSZ, 0:IMGSZ] / IMGSZ
    for k in range(N_IMAGES):
        c0, c1 = rng.integers(40, 215, 3), rng.integers(40, 215, 3)
        img = (c0 * (1 - xx[..., None]) * (1 - yy[..., None]) + c1 * xx[..., None] * yy[..., None]).astype(np.uint8)
        lines = []
        for _ in range(int(rng.integers(1, 5))):
            w, h = rng.integers(8, 40, 2)
            x1, y1 = rng.integers(0, IMGSZ - w), rng.integers(0, IMGSZ - h)
            cls = int(rng.integers(NC))
            colour = [(0, 0, 255), (0, 255, 0), (255, 0, 0)][cls]
            cv2.rectangle(img, (int(x1), int(y1)), (int(x1 + w - 1), int(y1 + h - 1)), colour, -1)
            lines.append(f"{cls} {(x1 + w / 2) / IMGSZ:.6f} {(y1 + h / 2) / IMGSZ:.6f} {w / IMGSZ:.6f} {h / IMGSZ:.6f}")
        cv2.imwrite(str(root / "images" / f"im{k:02d}.png"), img)
        (root / "labels" / f"im{k:02d}.txt").write_text("\n".join(lines) + "\n")


def model_yaml(path: Path) -> None:
    """Our conf/model/arch/yolov5.yaml (the v6+/v7.0 architecture) at the lock-step width, in YOLOv5's format."""
    import yaml

    arch = yaml.safe_load((ROOT / "conf" / "model" / "arch" / "yolov5.yaml").read_text())
    cfg = {"nc": NC, "depth_multiple": SETTINGS["depth_multiple"], "width_multiple": SETTINGS["width_multiple"]}
    cfg.update({k: arch[k] for k in ("anchors", "backbone", "head")})
    cfg["anchors"] = [[v for pair in level for v in pair] for level in arch["anchors"]]  # YOLOv5: flat w, h lists
    for layer in cfg["head"]:
        if layer[2] == "Upsample":
            layer[2] = "nn.Upsample"  # YOLOv5 evaluates module names in its own namespace
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def tensor_stats(state: dict) -> np.ndarray:
    """(n, 2) float64 sum and sum of squares of every floating-point tensor, in state-dict order."""
    rows = [(float(v.double().sum()), float(v.double().pow(2).sum())) for v in state.values() if v.is_floating_point()]
    return np.asarray(rows, np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--optimizer", default=SETTINGS["optimizer"], choices=["SGD", "Adam", "AdamW"])
    args = parser.parse_args()
    SETTINGS["optimizer"] = args.optimizer
    os.environ.update(
        TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS="1", YOLOv5_AUTOINSTALL="false",
        YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="lockstep-"))
    fonts = work / "config"
    fonts.mkdir()
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copy("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", fonts / name)
    os.environ["YOLOV5_CONFIG_DIR"] = str(fonts)

    import torch
    import yaml
    from yolov5 import train as y5train
    from yolov5.utils.callbacks import Callbacks

    if not (args.out / "images").exists():
        make_dataset(args.out)
    data = work / "data"
    shutil.copytree(args.out / "images", data / "images")
    shutil.copytree(args.out / "labels", data / "labels")
    (work / "data.yaml").write_text(
        yaml.safe_dump({"path": str(data), "train": "images", "val": "images", "names": ["r", "g", "b"]})
    )
    (work / "hyp.yaml").write_text(yaml.safe_dump(HYP))
    model_yaml(work / "model.yaml")

    rec: dict = {"init_state": None, "batches": [], "records": []}
    state = {"optimizer": None, "ema": None, "loss": None, "norm": None}

    real_opt = y5train.smart_optimizer

    def smart_optimizer(model, *a, **k):
        state["optimizer"] = real_opt(model, *a, **k)
        state["model"] = model
        return state["optimizer"]

    class RecordingEMA(y5train.ModelEMA):
        def __init__(self, model, *a, **k):
            super().__init__(model, *a, **k)
            state["ema"] = self

    class RecordingLoss(y5train.ComputeLoss):
        def __call__(self, p, targets):
            loss, items = super().__call__(p, targets)
            state["loss"] = (float(loss.detach()), items.detach().cpu().numpy().astype(np.float64))
            return loss, items

    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *a, **k):
        norm = real_clip(params, max_norm, *a, **k)
        state["norm"] = float(norm)
        return norm

    class Float64Model(y5train.Model):
        """YOLOv5's model in float64 (our side: trainer.precision=64-true), so rounding does not hide a difference."""

        def forward(self, x, *a, **k):
            return super().forward(x.double(), *a, **k)

        def float(self):  # train.py's model.half().float() keeps its fp16 rounding of the initial weights
            return self.double()

    Float64Model.__qualname__ = "Float64Model"  # YOLOv5 pickles the model class into its checkpoints
    globals()["Float64Model"] = Float64Model
    torch.set_default_dtype(torch.float64)
    y5train.Model = Float64Model
    y5train.smart_optimizer, y5train.ModelEMA, y5train.ComputeLoss = smart_optimizer, RecordingEMA, RecordingLoss
    torch.nn.utils.clip_grad_norm_ = clip

    callbacks = Callbacks()

    def on_train_start():
        rec["init_state"] = {k: v.detach().clone() for k, v in state["model"].state_dict().items()}
        state["updates"] = state["ema"].updates

    def on_train_batch_end(model, ni, imgs, targets, paths, mloss):
        opt, ema = state["optimizer"], state["ema"]
        stepped = ema.updates != state["updates"]
        state["updates"] = ema.updates
        rec["batches"].append(
            {
                "names": [Path(p).name for p in paths],
                "targets": targets.detach().cpu().numpy().astype(np.float64),
                "img_sum": int((imgs * 255).round().double().sum()),
            }
        )
        rec["records"].append(
            {
                "ni": int(ni),
                "loss": state["loss"][0],
                "loss_items": state["loss"][1],
                "lr": [float(g["lr"]) for g in opt.param_groups],
                "momentum": [float(g.get("momentum", g.get("betas", (0,))[0])) for g in opt.param_groups],
                "stepped": bool(stepped),
                "grad_norm": state["norm"] if stepped else None,
                "weights": tensor_stats(model.state_dict()),
                "ema": tensor_stats(ema.ema.state_dict()) if stepped else None,
            }
        )
        state["norm"] = None

    callbacks.register_action("on_train_start", callback=on_train_start)
    callbacks.register_action("on_train_batch_end", callback=on_train_batch_end)

    opt = y5train.parse_opt(True)
    opt.data, opt.cfg, opt.hyp, opt.weights = (
        str(work / "data.yaml"),
        str(work / "model.yaml"),
        str(work / "hyp.yaml"),
        "",
    )
    opt.imgsz, opt.batch_size, opt.epochs, opt.seed = (
        IMGSZ,
        SETTINGS["batch_size"],
        SETTINGS["epochs"],
        SETTINGS["seed"],
    )
    opt.optimizer, opt.workers, opt.device = SETTINGS["optimizer"], 0, "cpu"
    opt.noplots, opt.noautoanchor, opt.nosave, opt.exist_ok = True, True, True, True  # 7.0.14 crashes with --noval
    opt.project, opt.name = str(work / "runs"), "lockstep"
    y5train.main(opt, callbacks)

    # Kept small: the fp16-rounded initial weights and YOLOv5's float32 targets fit float32 exactly, and only the
    # first KEEP iterations keep their losses and weight sums; the schedule does not depend on them and covers all.
    rec["init_state"] = {k: v.float() if v.is_floating_point() else v for k, v in rec["init_state"].items()}
    for b in rec["batches"]:
        b["targets"] = b["targets"].astype(np.float32)
    rec["schedule"] = [{k: r[k] for k in ("ni", "lr", "momentum", "stepped")} for r in rec["records"]]
    rec["records"] = rec["records"][:KEEP]
    rec["meta"] = {
        **SETTINGS, "imgsz": IMGSZ, "nc": NC, "nb": -(-N_IMAGES // SETTINGS["batch_size"]), "hyp": HYP, "nbs": 64,
        "max_grad_norm": 10.0, "ema_decay": 0.9999, "ema_tau": 2000, "precision": "64-true", "yolov5": "7.0.14",
        "torch": torch.__version__, "python": sys.version.split()[0],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "reference.pt"
    if SETTINGS["optimizer"] != "SGD":  # same seed, same initial weights and batches: keep only what differs
        base = torch.load(target, weights_only=False)
        same_init = all(torch.equal(base["init_state"][k], v) for k, v in rec["init_state"].items())
        same_batches = [b["names"] for b in base["batches"]] == [b["names"] for b in rec["batches"]]
        if not (same_init and same_batches):
            raise SystemExit(f"{SETTINGS['optimizer']} run does not share {target}'s initial weights and batches")
        rec = {"records": rec["records"], "schedule": rec["schedule"], "meta": rec["meta"]}
        target = args.out / f"reference_{SETTINGS['optimizer'].lower()}.pt"
    torch.save(rec, target)
    steps = sum(r["stepped"] for r in rec["records"])
    print(f"wrote {target}: the first {KEEP} iterations of {SETTINGS['epochs']} ({steps} steps), the schedule of all")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
