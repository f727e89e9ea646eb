"""Reading the checkpoint a command is given (``ckpt=``, ``weights=``) with ``weights_only=True``: ours, or a YOLOv5
7.0 ``.pt`` (read by detector/yolov5_weights.py and put in our checkpoint's form), with a clear message when it is
neither, and the model it holds built with its run's config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from detector.module import DetectorModule
from detector.resume import CONFIG_KEY
from detector.yolov5_weights import Yolov5FileError, Yolov5Weights, is_yolov5_file, read_yolov5_weights

YOLOV5_IMGSZ = 640  # image size of a YOLOv5 file without training options (YOLOv5's val/detect/export default)


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable or not one of ours; the message names the file."""


def load_checkpoint(path: str | Path, key: str = "ckpt") -> dict[str, Any]:
    """A checkpoint of ours, loaded with ``weights_only=True`` (tensors and plain containers, no pickled code), or a
    YOLOv5 ``.pt`` in the same form (its EMA model, a run config of our defaults with its architecture and image
    size, ``data`` null). ``key`` names the setting in messages."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{key}={path}: no such file")
    if is_yolov5_file(path):
        try:
            return yolov5_as_checkpoint(read_yolov5_weights(path, "inference"))
        except Yolov5FileError as e:
            raise CheckpointError(f"{key}={e}") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, another format, or pickled objects weights_only refuses
        raise CheckpointError(f"{key}={path}: cannot be read as a detector checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or "state_dict" not in state or CONFIG_KEY not in state:
        raise CheckpointError(f"{key}={path}: not a detector checkpoint (no state_dict or run config)")
    return state


def default_run_config(overrides: list[str] | None = None) -> DictConfig:
    """conf/train.yaml as ``python -m detector.train`` composes it with no arguments (``run_dir`` empty)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from detector import CONF_DIR

    if GlobalHydra.instance().is_initialized():  # inside a command's @hydra.main (same config folder)
        cfg = compose("train", overrides=overrides or [])
    else:
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides or [])
    cfg.run_dir = ""
    return cfg


def yolov5_as_checkpoint(weights: Yolov5Weights) -> dict[str, Any]:
    """A YOLOv5 model in our checkpoint's form: ``state_dict`` under the module's names, ``hyper_parameters`` with
    nc and names, and a run config of our defaults with its architecture, image size and single_cls."""
    cfg = default_run_config()
    with open_dict(cfg):
        cfg.model = weights.model_cfg  # before resolving: module.model is ${model}
    cfg.imgsz = int(weights.opt.get("imgsz") or YOLOV5_IMGSZ)
    cfg.single_cls = bool(weights.opt.get("single_cls", False))
    run = OmegaConf.to_container(cfg, resolve=True)
    run["data"] = None  # YOLOv5's data path is relative to where it ran: val needs data=
    return {
        "state_dict": {f"model.{k}": v for k, v in weights.state_dict.items()},
        "hyper_parameters": {"nc": weights.nc, "names": weights.names},
        CONFIG_KEY: run,
    }


def model_from_checkpoint(state: dict[str, Any]) -> tuple[DetectorModule, DictConfig]:
    """The checkpoint's module (its run's model config, nc and names; the EMA weights) and the run's config."""
    from detector.train import build_module  # train imports the commands' modules; import it only when used

    run = OmegaConf.create(state[CONFIG_KEY])
    hparams = state.get("hyper_parameters", {})
    names = {int(k): str(v) for k, v in (hparams.get("names") or {}).items()}
    nc = int(hparams.get("nc", len(names)))
    module = build_module(run, nc, names or {i: str(i) for i in range(nc)})
    module.load_state_dict(state["state_dict"])  # the EMA weights (checkpoints keep the raw ones beside them)
    return module, run
