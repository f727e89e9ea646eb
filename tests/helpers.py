"""Test helpers: compose the real Hydra config with overrides."""

from __future__ import annotations

import lightning as L
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
