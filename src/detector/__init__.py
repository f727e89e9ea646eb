"""detector: YOLOv5's training recipe as a PyTorch Lightning application configured with Hydra."""

from importlib.resources import files
from pathlib import Path


def _conf_dir() -> str:
    """detector/conf in an installed wheel, conf/ of the checkout in an editable install or with src/ on the path."""
    try:
        return str(files("detector.conf"))
    except ModuleNotFoundError:  # src/ on sys.path without an install: the package-dir mapping is absent
        return str(Path(__file__).resolve().parents[2] / "conf")


CONF_DIR = _conf_dir()


def _register_schema() -> None:
    """conf/train.yaml names its schema, which lives in Hydra's ConfigStore. Without Hydra (the YOLOv5 benchmark
    environment imports our modules, never our configs) there is nothing to register."""
    try:
        from detector.schema import register_schema
    except ImportError:
        return
    register_schema()


_register_schema()
