"""Non-maximum suppression of decoded YOLO outputs (YOLOv5 semantics, without its time limit)."""

from __future__ import annotations

import torch
import torchvision

from detector.boxes import xywh2xyxy

_FIRST_K_PER_DET = 4  # first pass takes the top max(4 * max_det, 1000) rows
_FIRST_K_MIN = 1000
_OFFSET_TRICK_MAX_CPU = 3000  # above this many rows, per-class NMS is faster on CPU


def non_max_suppression(
    pred: torch.Tensor,
    *,
    conf_thres: float,
    iou_thres: float,
    max_det: int,
    multi_label: bool = True,
    agnostic: bool = False,
    max_nms: int = 30000,
    max_wh: int = 7680,
) -> list[torch.Tensor]:
    """Filter and suppress the decoded predictions of a batch.

    ``pred`` is ``(bs, N, 5 + nc)``: centre/size boxes in pixels, sigmoid objectness and class scores.
    Candidates need objectness > ``conf_thres``; their confidence is ``obj * cls``. With ``multi_label``
    (and nc > 1) every (box, class) pair above ``conf_thres`` becomes a row, otherwise only the best class.
    Rows are sorted by confidence, cut to ``max_nms``, suppressed per class (across classes with ``agnostic``)
    at ``iou_thres`` and cut to ``max_det``. Every image is processed; there is no time limit.

    ``max_wh`` is the class offset of YOLOv5's batched-NMS trick (boxes of different classes never overlap).
    On CPU with many rows, suppression runs class by class instead: same result, much faster there.

    Returns one ``(n, 6)`` float tensor ``[x1, y1, x2, y2, conf, cls]`` per image, sorted by confidence.
    """
    if pred.ndim != 3 or pred.shape[-1] < 6:
        raise ValueError(f"non_max_suppression expects (bs, N, 5 + nc) with nc >= 1, got {tuple(pred.shape)}")
    if not 0.0 <= conf_thres <= 1.0 or not 0.0 <= iou_thres <= 1.0:
        raise ValueError(f"conf_thres and iou_thres must be in [0, 1], got {conf_thres}, {iou_thres}")
    nc = pred.shape[-1] - 5
    multi_label = multi_label and nc > 1
    pred = pred.float()
    # whole-batch passes: each box's best class and its conf (obj >= 0, so max(obj * cls) == obj * max(cls))
    best_score, best_cls = pred[..., 5:].max(-1)
    best = best_score * pred[..., 4]
    candidates = (pred[..., 4] > conf_thres) & (best > conf_thres)  # boxes giving at least one row
    return [
        _suppress_image(
            pred[xi],
            best[xi],
            best_cls[xi],
            candidates[xi],
            conf_thres,
            iou_thres,
            max_det,
            multi_label,
            agnostic,
            max_nms,
            max_wh,
        )
        for xi in range(pred.shape[0])
    ]


def _suppress_image(
    x: torch.Tensor,
    best: torch.Tensor,
    best_cls: torch.Tensor,
    candidates: torch.Tensor,
    conf_thres: float,
    iou_thres: float,
    max_det: int,
    multi_label: bool,
    agnostic: bool,
    max_nms: int,
    max_wh: int,
) -> torch.Tensor:
    """NMS of one image's rows ``(N, 5 + nc)``; ``best``/``best_cls`` per box, ``candidates`` a bool mask.

    Greedy NMS keeps or drops a row looking only at higher-scored rows, so NMS over the top ``k`` rows gives
    exactly the head of NMS over the top ``max_nms`` rows. We start with a small ``k`` and grow it only while
    fewer than ``max_det`` rows survive: same output as sorting everything, a fraction of the work.
    """
    cand = candidates.nonzero().squeeze(1)
    if cand.numel() == 0:
        return x.new_zeros((0, 6))
    best = best[cand]
    k = min(max_nms, max(_FIRST_K_PER_DET * max_det, _FIRST_K_MIN))
    while True:
        # the top-k rows come from the k boxes with the highest best conf
        bi = cand[best.topk(min(k, cand.numel())).indices]
        if multi_label:
            scores = x[bi, 5:] * x[bi, 4:5]
            i, cls = (scores > conf_thres).nonzero(as_tuple=True)
            conf = scores[i, cls]
            rows = bi[i]
        else:
            conf, cls, rows = x[bi, 4] * x[bi, 5:].gather(1, best_cls[bi, None]).squeeze(1), best_cls[bi], bi
        n = conf.numel()
        complete = k >= max_nms or (bi.numel() == cand.numel() and n <= k)
        order = conf.topk(k).indices if n > k else conf.argsort(descending=True)
        boxes, conf, cls = xywh2xyxy(x[rows[order], :4]), conf[order], cls[order]
        keep = _nms(boxes, conf, cls, iou_thres, agnostic, max_wh)
        if complete or keep.numel() >= max_det:
            break
        k = min(k * 4, max_nms)
    keep = keep[:max_det]
    return torch.cat((boxes[keep], conf[keep, None], cls[keep, None].to(boxes.dtype)), 1)


def _nms(
    boxes: torch.Tensor, conf: torch.Tensor, cls: torch.Tensor, iou_thres: float, agnostic: bool, max_wh: int
) -> torch.Tensor:
    """Indices kept by per-class (or class-agnostic) NMS, by decreasing confidence."""
    if agnostic:
        return torchvision.ops.nms(boxes, conf, iou_thres)
    if boxes.is_cuda or boxes.shape[0] <= _OFFSET_TRICK_MAX_CPU:
        return torchvision.ops.nms(boxes + cls[:, None].to(boxes.dtype) * max_wh, conf, iou_thres)
    # on CPU the offset trick is quadratic across classes; torchvision then runs NMS class by class
    return torchvision.ops.batched_nms(boxes, conf, cls, iou_thres)
