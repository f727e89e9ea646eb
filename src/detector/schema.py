"""The types of conf/train.yaml's top-level keys, as a Hydra structured-config schema (``train_schema``, the first
entry of its defaults list): ``epochs=abc`` or ``imgsz=1.5`` fail while the config is composed, with Hydra's message
naming the key. The values and their documentation stay in conf/train.yaml; groups and nested nodes are untyped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SCHEMA_NAME = "train_schema"


@dataclass
class TrainSchema:
    # groups (conf/<group>/): their own files carry their keys
    hyp: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    callbacks: Any = MISSING
    logger: Any = MISSING
    augment: Any = MISSING
    # top-level settings
    data: str = MISSING
    weights: Optional[str] = None  # noqa: UP045 (OmegaConf reads the annotation: it needs typing's form)
    freeze: Any = MISSING  # an int or a list of ints: checked by run_config.prepare_config
    hyp_file: Optional[str] = None  # noqa: UP045
    datasets_dir: str = MISSING
    name: str = MISSING
    run_dir: str = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    imgsz: int = MISSING
    workers: Any = MISSING  # a number or auto: checked by run_config.prepare_config
    seed: int = MISSING
    optimizer: str = MISSING
    cos_lr: bool = MISSING
    ckpt_path: Optional[str] = None  # noqa: UP045
    resume_may_differ: list[str] = field(default_factory=list)
    channels_last: bool = MISSING
    nbs: int = MISSING
    schedule: Any = MISSING
    max_grad_norm: float = MISSING
    max_bad_steps: int = MISSING
    label_smoothing: float = MISSING
    single_cls: bool = MISSING
    autoanchor: bool = MISSING
    cache: Optional[str] = None  # noqa: UP045
    rect: bool = MISSING
    close_mosaic: int = MISSING
    multi_scale: bool = MISSING
    repair_jpeg: bool = MISSING
    ddp_timeout: float = MISSING
    trial_timeout: Optional[float] = None  # noqa: UP045
    trial_preload: bool = MISSING
    trial_pin_gpus: bool = MISSING
    amp_check: Any = MISSING
    val: Any = MISSING
    datamodule: Any = MISSING
    module: Any = MISSING


def register_schema() -> None:
    """Store the schema in Hydra's ConfigStore (where a config's defaults list finds it); idempotent."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainSchema)
