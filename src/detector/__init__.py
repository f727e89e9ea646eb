"""detector: YOLOv5's training recipe as a PyTorch Lightning application configured with Hydra."""

from importlib.resources import files

CONF_DIR = str(files("detector.conf"))  # conf/ in a checkout, detector/conf in an installed wheel
