"""`python -m detector.predict ckpt=... source=...`: a checkpoint's detections on images and videos, drawn and as
YOLO-format txt files with confidences, in a new run folder (conf/predict.yaml)."""

from __future__ import annotations

import glob
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from detector import CONF_DIR
from detector.boxes import scale_boxes
from detector.checkpoint_file import CheckpointError, load_checkpoint, model_from_checkpoint
from detector.console import exit_on_user_error, quiet_third_party
from detector.data.images import IMG_FORMATS, read_image
from detector.data.letterbox import letterbox
from detector.models.inference_copy import inference_copy
from detector.nms import non_max_suppression
from detector.plots.annotate import annotate

log = logging.getLogger(__name__)

VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")


class SourceError(ValueError):
    """The source is missing or holds no images or videos; the message names it."""


def list_sources(source: str, cwd: str | Path) -> list[Path]:
    """The image and video files of ``source``: a file, a folder (not recursive) or a glob, sorted."""
    path = Path(source).expanduser()
    path = path if path.is_absolute() else Path(cwd) / path
    if any(ch in source for ch in "*?["):
        files = [Path(f) for f in sorted(glob.glob(str(path), recursive=True))]
    elif path.is_dir():
        files = sorted(path.iterdir())
    elif path.is_file():
        files = [path]
    else:
        raise SourceError(f"source={source}: no such file or folder")
    kept = [f for f in files if f.is_file() and f.suffix[1:].lower() in (*IMG_FORMATS, *VID_FORMATS)]
    if not kept:
        raise SourceError(f"source={source}: no images ({', '.join(IMG_FORMATS)}) or videos ({', '.join(VID_FORMATS)})")
    return kept


class Predictor:
    """Detections of one BGR image in its own pixels, ``(n, 6)`` ``[x1, y1, x2, y2, conf, cls]``: letterboxed to
    ``imgsz`` (a stride multiple, padded only up to the next multiple, as YOLOv5's detect.py), the model, NMS."""

    def __init__(self, model: torch.nn.Module, imgsz: int, conf: float, iou: float, max_det: int, agnostic: bool,
                 device: torch.device) -> None:  # fmt: skip
        self.model = model.to(device).eval()
        self.stride = int(model.stride.max())
        self.imgsz = max(self.stride, math.ceil(imgsz / self.stride) * self.stride)
        self.conf, self.iou, self.max_det, self.agnostic, self.device = conf, iou, max_det, agnostic, device

    @torch.no_grad()
    def __call__(self, im0: np.ndarray) -> np.ndarray:
        im = letterbox(im0, self.imgsz, auto=True, stride=self.stride)[0]
        x = torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1))).to(self.device)
        decoded = self.model(x[None].float() / 255)[0]
        det = non_max_suppression(decoded, conf_thres=self.conf, iou_thres=self.iou, max_det=self.max_det,
                                  multi_label=False, agnostic=self.agnostic)[0]  # fmt: skip
        scale_boxes(im.shape[:2], det[:, :4], im0.shape[:2])
        return det.cpu().numpy()


def yolo_lines(det: np.ndarray, hw: tuple[int, int]) -> list[str]:
    """``class x y w h conf`` per detection, box centre and size normalised by the image (YOLOv5's save_conf)."""
    h, w = hw
    lines = []
    for x1, y1, x2, y2, conf, cls in det.tolist():
        values = (int(cls), (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h, conf)
        lines.append(("%g " * 6).rstrip() % values)
    return lines


def _frames(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    cap = cv2.VideoCapture(str(path))
    try:
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield i, frame
            i += 1
    finally:
        cap.release()


def predict(cfg: DictConfig, cwd: str | None = None) -> dict[str, np.ndarray]:
    """Run ``cfg.ckpt`` on ``cfg.source``; returns the detections per image (videos: per ``<stem>_<frame>``)."""
    quiet_third_party()
    cwd = cwd or str(Path.cwd())
    sources = list_sources(str(cfg.source), cwd)
    module, run = model_from_checkpoint(load_checkpoint(Path(cwd) / str(cfg.ckpt)))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    imgsz = int(cfg.imgsz if cfg.imgsz is not None else run.imgsz)
    model = inference_copy(module.model, fuse_bn=True, channels_last=False)  # BatchNorm folded in: faster, same boxes
    predictor = Predictor(model, imgsz, cfg.conf, cfg.iou, cfg.max_det, cfg.agnostic_nms, device)
    run_dir = Path(cfg.run_dir)
    (run_dir / "labels").mkdir(parents=True, exist_ok=True)
    names, results = module.names, {}

    def handle(key: str, im0: np.ndarray) -> np.ndarray:
        det = predictor(im0)
        results[key] = det
        if cfg.save_txt:
            (run_dir / "labels" / f"{key}.txt").write_text("".join(f"{ln}\n" for ln in yolo_lines(det, im0.shape[:2])))
        return annotate(im0, det, names, cfg.line_width) if cfg.save_img else im0

    for path in sources:
        if path.suffix[1:].lower() in VID_FORMATS:
            fps = cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) or 30
            writer = None
            for i, frame in _frames(path):
                out = handle(f"{path.stem}_{i}", frame)
                if cfg.save_img:
                    if writer is None:
                        writer = cv2.VideoWriter(str(run_dir / f"{path.stem}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                                 fps, (frame.shape[1], frame.shape[0]))  # fmt: skip
                    writer.write(out)
            if writer is None:
                log.warning("%s: no frames could be read; skipped", path)
            else:
                writer.release()
            continue
        im0 = read_image(path)
        if im0 is None:
            log.warning("%s: cannot be read as an image; skipped", path)
            continue
        out = handle(path.stem, im0)
        if cfg.save_img:
            cv2.imwrite(str(run_dir / path.name), out)
    log.info("%d images and frames, %d detections; results saved to %s", len(results),
             sum(len(d) for d in results.values()), run_dir)  # fmt: skip
    return results


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_on_user_error((CheckpointError, SourceError), predict, cfg, get_original_cwd())


if __name__ == "__main__":
    main()
