"""Test helpers: compose the real Hydra config with overrides; datasets with the config's rendering settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import yaml
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from detector import CONF_DIR

# BGR colours far apart (L-inf 255) and from the grey 114 padding: blended edges never look like another colour.
PALETTE = [
    (0, 0, 255),
    (0, 255, 0),
    (255, 0, 0),
    (0, 255, 255),
    (255, 0, 255),
    (255, 255, 0),
    (255, 255, 255),
]


def compose_train(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/train.yaml as `python -m detector.train` would, without starting a run."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides or [])


class StopAfterEpochs(Callback):
    """Ends a fit after ``epochs`` epochs as an interruption would, checkpoints written (resume tests)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def conf_rendering(**overrides: Any) -> dict[str, Any]:
    """conf/augment/default.yaml (the settings a YoloDataset renders with) with ``overrides``."""
    values = yaml.safe_load((Path(CONF_DIR) / "augment" / "default.yaml").read_text())
    unknown = set(overrides) - set(values)
    if unknown:
        raise KeyError(f"not conf/augment keys: {sorted(unknown)}")
    return values | overrides


def make_dataset(labelset: Any, **kw: Any) -> Any:
    """YoloDataset with the config's rendering settings; conf/augment keys among ``kw`` override them."""
    from detector.data.dataset import RENDERING_KEYS, YoloDataset

    rendering = conf_rendering(**{k: kw.pop(k) for k in list(kw) if k in RENDERING_KEYS})
    return YoloDataset(labelset, rendering=rendering, **kw)
