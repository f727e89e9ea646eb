"""AMP check: before the Trainer is built, the built-in model's detections on the built-in image in full and in
mixed precision must agree on the training device, or the run falls back to full precision with a warning.

YOLOv5's check runs on a downloaded pretrained model; an untrained model detects nothing, and a check that compares
two empty lists passes whatever the device computes. Ours uses a small model state fitted to a built-in image
(``assets/amp_check.pt``, made by ``tools/make_amp_check_asset.py``) and refuses to pass when that state yields no
detections in full precision.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torchvision.ops import box_iou

from detector.models import DetectionModel
from detector.nms import non_max_suppression
from detector.run_config import trains_on_cuda

log = logging.getLogger(__name__)

ASSET = Path(__file__).with_name("assets") / "amp_check.pt"
AUTOCAST_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
FULL_PRECISION = "32-true"
# Rank 0 decides; the DDP ranks Lightning starts inherit its environment and take its decision (identical on all).
DECISION_ENV = "DETECTOR_AMP_DECISION"


def node_local_rank(env: Mapping[str, str]) -> int:
    """This process's rank on its node: ``LOCAL_RANK`` (Lightning's launcher, torchrun), else ``SLURM_LOCALID``
    (a task started by ``srun``, which sets no ``LOCAL_RANK``), else 0."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = env.get(name, "").strip()
        if value:
            return int(value)
    return 0


def training_device(trainer_cfg: Mapping[str, Any], local_rank: int = 0) -> torch.device:
    """The device this process will train on, from the trainer config (CUDA when asked for or ``auto``)."""
    if trains_on_cuda(trainer_cfg):
        devices = trainer_cfg.get("devices", "auto")
        index = list(devices)[local_rank] if isinstance(devices, list | tuple) else local_rank
        return torch.device("cuda", int(index))
    return torch.device("cpu")


def load_asset(path: Path = ASSET) -> tuple[DetectionModel, torch.Tensor]:
    """The check's model (eval mode, float32) and its image ``(1, 3, h, w)`` in [0, 1]."""
    asset = torch.load(path, map_location="cpu", weights_only=True)
    model = DetectionModel(asset["model"], nc=int(asset["nc"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in asset["state"].items()})
    return model.eval(), asset["image"][None].float() / 255


def disagreement(ref: torch.Tensor, other: torch.Tensor, settings: Mapping[str, Any]) -> str | None:
    """Why two detection sets ``(n, 6)`` [x1, y1, x2, y2, conf, cls] disagree, or None when they agree.

    Each detection of one set at ``conf_thres`` or above must have one of the same class in the other, at IoU >=
    ``match_iou`` and confidence within ``conf_tol``. The other set is searched down to ``conf_thres - conf_tol``,
    so a confidence that only crosses the threshold is no disagreement."""
    for a, b, name in ((ref, other, "full-precision"), (other, ref, "mixed-precision")):
        a = a[a[:, 4] >= settings["conf_thres"]]
        b = b[b[:, 4] >= settings["conf_thres"] - settings["conf_tol"]]
        if not len(a):
            continue
        if not len(b):
            return f"{len(a)} {name} detections, none in the other precision"
        iou = box_iou(a[:, :4], b[:, :4])
        same = (a[:, 5:6] == b[:, 5][None]) & ((a[:, 4:5] - b[:, 4][None]).abs() <= settings["conf_tol"])
        best = (iou * same).max(1).values
        missed = int((best < settings["match_iou"]).sum())
        if missed:
            return f"{missed} of {len(a)} {name} detections have no match (best IoU {best.min():.3f})"
    return None


@torch.inference_mode()
def detections(model: DetectionModel, image: torch.Tensor, settings: Mapping[str, Any], dtype=None) -> torch.Tensor:
    """The model's detections on the image, under autocast to ``dtype`` when given."""
    device = image.device
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        decoded = model(image)[0]
    low = max(settings["conf_thres"] - settings["conf_tol"], 1e-3)
    return non_max_suppression(decoded.float(), conf_thres=low, iou_thres=settings["iou_thres"], max_det=300)[0]


def check_amp(device: torch.device, precision: str, settings: Mapping[str, Any], asset: Path = ASSET) -> str | None:
    """Run the check on ``device``; returns why mixed precision disagrees with full precision, or None."""
    model, image = load_asset(asset)
    model, image = model.to(device), image.to(device)
    ref = detections(model, image, settings)
    confident = int((ref[:, 4] >= settings["conf_thres"]).sum())
    if confident < settings["min_detections"]:
        raise RuntimeError(
            f"AMP check: the built-in model {asset} gives {confident} detections in full precision on {device} "
            f"(expected at least {settings['min_detections']}): the installed asset is broken, or the device "
            "computes wrongly even in full precision"
        )
    try:
        mixed = detections(model, image, settings, AUTOCAST_DTYPES[precision])
    except RuntimeError as e:  # e.g. a device without the autocast dtype
        return f"autocast failed: {e}"
    return disagreement(ref, mixed, settings)


def checked_precision(precision: str, trainer_cfg: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """``precision``, or full precision when the AMP check on the training device fails (with a warning).

    Only the ``*-mixed`` (autocast) precisions are checked. Rank 0 runs the check and records its decision in the
    environment, which the DDP ranks Lightning launches inherit; a rank started by another launcher (torchrun, SLURM)
    checks its own device, and :class:`PrecisionAgreement` refuses a run whose ranks decided differently."""
    if not settings.get("enabled", True) or precision not in AUTOCAST_DTYPES:
        return precision
    rank = rank_zero_only.rank
    decided = os.environ.get(DECISION_ENV, "")
    if rank > 0 and decided.startswith(f"{precision}=>"):
        return decided.split("=>", 1)[1]
    device = training_device(trainer_cfg, node_local_rank(os.environ))
    reason = check_amp(device, precision, settings)
    result = precision if reason is None else FULL_PRECISION
    if reason is None:
        log.info("AMP check passed on %s: %s detections agree with full precision", device, precision)
    else:
        log.warning(
            "AMP check failed on %s: %s; training in full precision (%s) instead of %s. "
            "amp_check.enabled=false skips the check",
            device, reason, FULL_PRECISION, precision,
        )  # fmt: skip
    if rank == 0:
        os.environ[DECISION_ENV] = f"{precision}=>{result}"
    return result


class PrecisionAgreement(L.Callback):
    """Refuses a multi-process run whose ranks chose different precisions (each checked its own device)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return
        mine = str(trainer.precision)
        every = [None] * trainer.world_size
        torch.distributed.all_gather_object(every, mine)
        if len(set(every)) > 1:
            raise RuntimeError(
                f"the AMP check decided differently on different ranks ({every}): set trainer.precision explicitly "
                "(and amp_check.enabled=false to keep mixed precision)"
            )
