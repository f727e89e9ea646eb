"""Test helpers: compose the real Hydra config with overrides."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

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
