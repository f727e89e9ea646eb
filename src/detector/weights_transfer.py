"""``train weights=path``: start from a checkpoint of ours or a YOLOv5 ``.pt``, as YOLOv5's ``--weights`` does.

Every tensor whose name and shape match is copied. When the data has another class count than the checkpoint the
Detect output convolutions do not match and keep their fresh initialisation (YOLOv5's fine-tuning on new classes);
any other mismatch means the checkpoint holds another architecture, which is an error naming both."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from detector.checkpoint_file import CheckpointError, load_checkpoint
from detector.models import DetectionModel
from detector.resume import CONFIG_KEY
from detector.run_config import ConfigError
from detector.yolov5_weights import Yolov5FileError, is_yolov5_file, read_yolov5_weights

log = logging.getLogger(__name__)


def source_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict, int]:
    """The state dict (``model.<layer>.…``), model config and class count of ``weights=path``: a YOLOv5 file's
    ``model`` (what its train.py transfers), or our checkpoint's EMA weights."""
    if is_yolov5_file(path):
        try:
            w = read_yolov5_weights(path, "transfer")
        except Yolov5FileError as e:
            raise CheckpointError(f"weights={e}") from e
        return w.state_dict, w.model_cfg, w.nc
    state = load_checkpoint(path, key="weights")
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    nc = int(state.get("hyper_parameters", {}).get("nc", 0))
    return weights, dict(state[CONFIG_KEY].get("model", {})), nc


def transfer_weights(model: DetectionModel, path: str | Path, model_name: str, keep_anchors: bool = True) -> int:
    """Copy the matching tensors of ``path`` into ``model``; returns how many. ``keep_anchors=False`` leaves the
    model's anchors (``hyp.anchors`` asked for new ones, as YOLOv5 excludes them then)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights={path}: no such file")
    source, source_cfg, source_nc = source_weights(path)
    target = model.state_dict()
    head_out = f"model.{len(model.model) - 1}.m."  # Detect's output convs: their shape follows nc
    differ = sorted(
        k for k in set(target) | set(source)
        if not k.startswith(head_out) and (k not in source or k not in target or source[k].shape != target[k].shape)
    )  # fmt: skip
    if differ:
        held = f"{source_cfg.get('name', '?')} (depth_multiple {source_cfg.get('depth_multiple')}, width_multiple " \
               f"{source_cfg.get('width_multiple')})"  # fmt: skip
        raise ConfigError(
            f"weights={path} holds a {held} model that does not fit model={model_name}: {len(differ)} tensors are "
            f"missing or shaped differently (first: {differ[0]}). Choose its model (model=yolov5n/s/m/l/x, or "
            "model.depth_multiple=… model.width_multiple=…)"
        )
    take = {
        k: v for k, v in source.items()
        if k in target and v.shape == target[k].shape and (keep_anchors or not k.endswith(".anchors"))
    }  # fmt: skip
    model.load_state_dict(take, strict=False)
    log.info("Transferred %d/%d items from %s", len(take), len(target), path)
    if source_nc != model.nc:
        fresh = sum(k.startswith(head_out) for k in target)
        log.warning(
            "weights=%s was trained on %d classes, the data has %d: the Detect output layers (%d tensors) start "
            "from a fresh initialisation (as YOLOv5 does when fine-tuning on new classes)",
            path, source_nc, model.nc, fresh,
        )  # fmt: skip
    return len(take)
