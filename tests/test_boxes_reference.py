"""Box IoU, CIoU and the EMA decay ramp against values computed by YOLOv5 7.0's own functions.

The expected numbers were printed by ``yolov5.utils.metrics.bbox_iou(..., CIoU=True)`` and ``box_iou`` in float64
(bench/.venv-yolov5), for overlapping, disjoint, nested and differently shaped boxes.
"""

from __future__ import annotations

import math

import pytest
import torch

from detector.boxes import bbox_ciou, box_iou
from detector.callbacks.ema import YoloEmaAverage

BOXES1 = [[5, 5, 4, 2], [5, 5, 4, 2], [1, 1, 1, 3], [0.5, 0.5, 0.2, 0.3], [10, 10, 2, 2], [3, 4, 6, 1.5]]
BOXES2 = [[5, 5, 4, 2], [6, 5.5, 3, 3], [1.5, 0.5, 2, 1], [2.5, 2.5, 1, 1], [10.5, 9.5, 4, 1], [3.5, 4, 5, 2.5]]
YOLOV5_CIOU = [
    0.9999999875000002,
    0.37111637496358985,
    0.14903846222494396,
    -0.5806917215721427,
    0.2904866469520437,
    0.529020652792373,
]


def test_ciou_equals_yolov5():
    got = bbox_ciou(torch.tensor(BOXES1, dtype=torch.float64), torch.tensor(BOXES2, dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(YOLOV5_CIOU, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_ciou_is_not_plain_iou():
    got = bbox_ciou(torch.tensor(BOXES1[3:4]), torch.tensor(BOXES2[3:4]))
    assert float(got) < 0  # disjoint boxes: IoU 0, CIoU pays the centre distance


def test_box_iou_equals_yolov5():
    x1 = torch.tensor([[0.0, 0, 4, 2], [1, 1, 3, 5], [2, 0, 6, 3]], dtype=torch.float64)
    x2 = torch.tensor([[1.0, 1, 2, 2], [0, 0, 4, 4]], dtype=torch.float64)
    expected = [
        [0.12499999843750002, 0.49999999687499996],
        [0.12499999843750002, 0.3333333314814815],
        [0.0, 0.2727272714876033],
    ]
    torch.testing.assert_close(box_iou(x1, x2), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "updates,expected", [(1, 0.9999 * (1 - math.exp(-1 / 2000))), (2000, 0.63206), (10000, 0.99316)]
)
def test_ema_decay_ramp(updates, expected):
    assert YoloEmaAverage(0.9999, 2000).decay_at(updates) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("offset", [0, 1])
def test_ema_update_weighs_by_the_ramp(offset):
    avg = YoloEmaAverage(0.9999, 2000, offset=offset)
    ema, model = [torch.zeros(3, dtype=torch.float64)], [torch.ones(3, dtype=torch.float64)]
    avg(ema, model, torch.tensor(5))
    d = 0.9999 * (1 - math.exp(-(5 + offset) / 2000))
    torch.testing.assert_close(ema[0], torch.full((3,), 1 - d, dtype=torch.float64))
