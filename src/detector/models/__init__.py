"""YOLOv5 detection model: building blocks, Detect head, config parser and DetectionModel."""

from detector.models.detect import Detect, check_anchor_order
from detector.models.yolo import DetectionModel

__all__ = ["Detect", "DetectionModel", "check_anchor_order"]
