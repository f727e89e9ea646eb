"""predictions.json: every validation detection in COCO's results format, in the images' own pixels."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from detector.boxes import scale_boxes

log = logging.getLogger(__name__)


def image_id(path: str) -> int | str:
    """COCO's image id of a file: its stem, as a number when it is one (YOLOv5's rule)."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


class PredictionsJson(Callback):
    """Collects ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` per detection of one validation and
    writes them to ``path`` at its end. Category ids are the class indices. Single process: under DDP each rank
    would see only its own images."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        imgs, _, paths, infos = batch
        height, width = imgs.shape[2:]
        for i, det in enumerate(outputs):
            det = det.detach().float().cpu().clone()
            if infos is not None and infos[i] is not None:
                scale_boxes((height, width), det[:, :4], infos[i][0], infos[i][1])
            for x1, y1, x2, y2, score, cls in det.tolist():
                self.rows.append({"image_id": image_id(paths[i]), "category_id": int(cls),
                                  "bbox": [round(v, 3) for v in (x1, y1, x2 - x1, y2 - y1)],
                                  "score": round(score, 5)})  # fmt: skip

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.rows))
        log.info("%d predictions saved to %s", len(self.rows), self.path)
