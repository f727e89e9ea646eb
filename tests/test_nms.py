"""non_max_suppression: thresholds, per-class suppression, multi-label rows, caps, and exactness."""

import pytest
import torch
import torchvision

from detector.boxes import xywh2xyxy
from detector.nms import non_max_suppression as _nms

VAL = dict(conf_thres=0.001, iou_thres=0.6, max_det=300)  # conf/train.yaml's val thresholds (YOLOv5's val.py)


def non_max_suppression(pred, **kw):
    """Our NMS with the validation thresholds unless ``kw`` sets others."""
    return _nms(pred, **(VAL | kw))


def _row(cx, cy, w, h, obj, cls_scores):
    return [cx, cy, w, h, obj, *cls_scores]


def _pred(rows):
    return torch.tensor([rows], dtype=torch.float32)


def _reference_nms(pred, conf_thres, iou_thres, max_det, max_nms, multi_label=True, max_wh=7680):
    """Plain YOLOv5-style NMS: full sort, offset trick, no shortcuts."""
    out = []
    for x in pred:
        x = x[x[:, 4] > conf_thres]
        scores = x[:, 5:] * x[:, 4:5]
        boxes = xywh2xyxy(x[:, :4])
        if multi_label and scores.shape[1] > 1:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            det = torch.cat((boxes[i], scores[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((boxes, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        keep = torchvision.ops.nms(det[:, :4] + det[:, 5:6] * max_wh, det[:, 4], iou_thres)[:max_det]
        out.append(det[keep])
    return out


def _random_pred(bs, n, nc, obj_scale, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(bs, n, 2, generator=g) * 320
    wh = torch.rand(bs, n, 2, generator=g) * 60 + 4
    obj = torch.rand(bs, n, 1, generator=g) * obj_scale
    return torch.cat((xy, wh, obj, torch.rand(bs, n, nc, generator=g)), 2)


def test_overlapping_same_class_suppressed_and_boxes_converted():
    pred = _pred([_row(50, 50, 20, 20, 0.9, [0.9, 0.0]), _row(51, 50, 20, 20, 0.8, [0.9, 0.0])])
    (out,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)
    assert out.shape == (1, 6)
    torch.testing.assert_close(out[0], torch.tensor([40.0, 40.0, 60.0, 60.0, 0.81, 0.0]))


def test_different_classes_kept_unless_agnostic():
    pred = _pred([_row(50, 50, 20, 20, 0.9, [0.9, 0.0]), _row(51, 50, 20, 20, 0.8, [0.0, 0.9])])
    (out,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)
    assert out[:, 5].tolist() == [0.0, 1.0]
    (out,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45, agnostic=True)
    assert out[:, 5].tolist() == [0.0]


def test_multi_label_gives_one_row_per_class_above_threshold():
    pred = _pred([_row(50, 50, 20, 20, 1.0, [0.7, 0.5, 0.1])])
    (out,) = non_max_suppression(pred, conf_thres=0.25, multi_label=True)
    assert out[:, 5].tolist() == [0.0, 1.0]
    torch.testing.assert_close(out[:, 4], torch.tensor([0.7, 0.5]))
    (single,) = non_max_suppression(pred, conf_thres=0.25, multi_label=False)
    assert single.shape == (1, 6) and single[0, 5] == 0


def test_conf_threshold_on_obj_and_on_obj_times_cls():
    pred = _pred(
        [
            _row(10, 10, 8, 8, 0.2, [1.0, 0.0]),  # obj below threshold
            _row(50, 50, 8, 8, 0.5, [0.4, 0.0]),  # obj passes, obj * cls = 0.2 does not
            _row(90, 90, 8, 8, 0.5, [0.8, 0.0]),  # 0.4 passes
        ]
    )
    (out,) = non_max_suppression(pred, conf_thres=0.3)
    assert out.shape == (1, 6)
    assert out[0, 4].item() == pytest.approx(0.4)


def test_max_det_keeps_the_most_confident_sorted():
    rows = [_row(20 * i + 10, 10, 8, 8, 0.3 + 0.01 * i, [1.0]) for i in range(40)]
    (out,) = non_max_suppression(_pred(rows), conf_thres=0.1, max_det=5)
    assert out.shape == (5, 6)
    torch.testing.assert_close(out[:, 4], torch.tensor([0.69, 0.68, 0.67, 0.66, 0.65]))


def test_single_class_and_empty_inputs():
    (out,) = non_max_suppression(_pred([_row(50, 50, 20, 20, 0.9, [0.5])]), conf_thres=0.1)
    assert out.shape == (1, 6) and out[0, 5] == 0
    outs = non_max_suppression(torch.zeros(3, 0, 7))
    assert len(outs) == 3 and all(o.shape == (0, 6) for o in outs)
    outs = non_max_suppression(torch.zeros(2, 10, 8))  # nothing above threshold
    assert [o.shape for o in outs] == [(0, 6), (0, 6)]


def test_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="bs, N, 5"):
        non_max_suppression(torch.zeros(10, 85))


@pytest.mark.parametrize("max_det", [1, 30, 300])
@pytest.mark.parametrize(("nc", "obj_scale", "multi_label"), [(20, 1.0, True), (20, 0.05, True), (5, 1.0, False)])
def test_matches_plain_full_sort_reference(max_det, nc, obj_scale, multi_label):
    pred = _random_pred(2, 1500, nc, obj_scale, seed=max_det + nc)
    kw = dict(conf_thres=0.001, iou_thres=0.5, max_det=max_det, max_nms=4000)
    ours = non_max_suppression(pred, multi_label=multi_label, **kw)
    ref = _reference_nms(pred, multi_label=multi_label, **kw)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_many_rows_use_per_class_path_and_still_match():
    pred = _random_pred(1, 3000, 10, 1.0, seed=3)  # ~30000 rows: the first pass is not enough at max_det 3000
    kw = dict(conf_thres=0.001, iou_thres=0.7, max_det=3000, max_nms=30000)
    (ours,) = non_max_suppression(pred, **kw)
    (ref,) = _reference_nms(pred, **kw)
    assert ours.shape == ref.shape and ours.shape[0] == 3000
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
