"""Checks and completes the composed Hydra config before a run: hyp files, choices, checkpoint, precision."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from detector.optim import OPTIMIZER_CHOICES as OPTIMIZERS

log = logging.getLogger(__name__)

CACHES = (None, "ram", "disk")
# Callbacks that are part of YOLOv5's recipe: dropping one is allowed but said (AutoAnchor has its own switch).
RECIPE_CALLBACKS = {
    "ema": "validation, best.ckpt and the final weights use the raw weights instead of their moving average",
    "autoanchor": "the model keeps its configured anchors whatever the labels (autoanchor=false says so quietly)",
}


class ConfigError(ValueError):
    """A config value that cannot work, with a message naming the key."""


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def load_hyp_file(path: str | Path, hyp: DictConfig) -> DictConfig:
    """Merge a YOLOv5 hyp yaml over ``hyp``; unknown keys are an error naming the key and the file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"hyp_file={path}: no such file")
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"hyp_file={path}: not valid YAML ({e})") from e
    if not isinstance(values, dict):
        raise ConfigError(f"hyp_file={path}: expected a mapping of hyp keys, got {type(values).__name__}")
    known = list(hyp.keys())
    for key in values:
        if key not in known:
            raise ConfigError(f"hyp_file={path}: unknown hyp key '{key}'.{_suggest(str(key), known)}")
    missing = [k for k in known if k not in values]
    if missing:
        log.info("hyp_file %s has no value for %s; keeping the selected hyp's values", file, ", ".join(missing))
    return OmegaConf.merge(hyp, values)


def trains_on_cuda(trainer_cfg: Mapping[str, Any]) -> bool:
    """Whether a Trainer config trains on CUDA: a CUDA device is there and the accelerator asks for it or is auto."""
    return torch.cuda.is_available() and str(trainer_cfg.get("accelerator", "auto")) in ("auto", "gpu", "cuda")


def resolve_precision(trainer_cfg: DictConfig) -> str:
    """``auto`` means AMP (16-mixed) when training on CUDA, else full precision."""
    precision = str(trainer_cfg.get("precision", "auto"))
    if precision != "auto":
        return precision
    return "16-mixed" if trains_on_cuda(trainer_cfg) else "32-true"


def prepare_config(cfg: DictConfig) -> DictConfig:
    """Validate choices and apply ``hyp_file``; returns the config to run with."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer={cfg.optimizer}: choose one of {', '.join(OPTIMIZERS)}")
    if cfg.cache not in CACHES:
        raise ConfigError(f"cache={cfg.cache}: choose null, ram or disk")
    for key in ("epochs", "batch_size", "imgsz"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"{key}={cfg[key]}: must be a positive integer")
    frozen = list(cfg.freeze) if OmegaConf.is_list(cfg.freeze) else [cfg.freeze]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in frozen):
        raise ConfigError(f"freeze={cfg.freeze}: an integer N >= 0 (the first N layers) or a list of layer indices")
    workers = cfg.workers
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"workers={cfg.workers}: a number >= 0, or auto (YOLOv5's rule: at most 8 per rank)")
    if not 0 <= int(cfg.seed) < 2**32:
        raise ConfigError(f"seed={cfg.seed}: must be in [0, 2**32) (numpy's and the sampler's seed range)")
    if cfg.trainer.get("sync_batchnorm") and not trains_on_cuda(cfg.trainer):
        raise ConfigError("trainer.sync_batchnorm=true needs CUDA devices: torch's SyncBatchNorm is GPU-only")
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and int(max_epochs) != int(cfg.epochs):
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} differs from epochs={cfg.epochs}: set the run length with epochs alone "
            "(it also plans the LR schedule, close_mosaic and the final validation)"
        )
    callbacks = cfg.get("callbacks") or {}
    autoanchor_on = bool(cfg.autoanchor) and callbacks.get("autoanchor") is not None
    if cfg.hyp.get("anchors") is not None and not autoanchor_on:
        raise ConfigError(
            f"hyp.anchors={cfg.hyp.anchors} asks AutoAnchor for new anchors, but AutoAnchor is off "
            "(autoanchor=false or callbacks.autoanchor=null): the model would train on placeholder anchors. "
            "Turn AutoAnchor on or set hyp.anchors=null"
        )
    for name, effect in RECIPE_CALLBACKS.items():
        if callbacks.get(name) is None:
            log.warning("callbacks.%s is off: %s (YOLOv5's recipe always has it)", name, effect)
    with open_dict(cfg):
        if cfg.hyp_file:
            cfg.hyp = load_hyp_file(cfg.hyp_file, cfg.hyp)
        cfg.trainer.precision = resolve_precision(cfg.trainer)
    return cfg
