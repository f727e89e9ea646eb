"""YOLOv5 (v7.0) training loss: anchor/cell target assignment, CIoU box loss, objectness and class BCE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from detector.boxes import bbox_ciou

NEIGHBOUR_BIAS = 0.5  # a target also claims the adjacent cell on the side of the cell half it lies in
BALANCE_3 = (4.0, 1.0, 0.4)  # objectness weight per level for P3/P4/P5 models
BALANCE_OTHER = (4.0, 1.0, 0.25, 0.06, 0.02)  # for any other level count (e.g. P6 models)
FOCAL_ALPHA = 0.25


def scale_loss_gains(hyp: Mapping, nl: int, nc: int, imgsz: int) -> dict:
    """Copy of ``hyp`` with box/cls/obj gains scaled for the level count, class count and image size."""
    out = dict(hyp)
    out["box"] = hyp["box"] * 3 / nl
    out["cls"] = hyp["cls"] * nc / 80 * 3 / nl
    out["obj"] = hyp["obj"] * (imgsz / 640) ** 2 * 3 / nl
    return out


def loss_dtype(preds: Sequence[torch.Tensor]) -> torch.dtype:
    """The loss is computed in float32 under AMP or half models, in float64 for a float64 model."""
    return torch.promote_types(preds[0].dtype, torch.float32)


def smooth_bce(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative BCE targets with label smoothing ``eps``."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class BCEWithLogits(nn.Module):
    """Mean BCE-with-logits whose ``pos_weight`` follows the input's device (one copy made per device)."""

    def __init__(self, pos_weight: float = 1.0):
        super().__init__()
        self.pos_weight = float(pos_weight)
        self._pw: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        key = (logits.device, logits.dtype)
        if key not in self._pw:  # a host-to-device copy per call would stall the GPU queue
            self._pw[key] = torch.tensor([self.pos_weight], device=logits.device, dtype=logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self._pw[key], reduction=reduction)


class FocalLoss(nn.Module):
    """Focal loss around a BCE-with-logits criterion: loss * alpha_t * (1 - p_t)^gamma, then mean."""

    def __init__(self, bce: BCEWithLogits, gamma: float, alpha: float = FOCAL_ALPHA):
        super().__init__()
        self.bce, self.gamma, self.alpha = bce, gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.bce(logits, target, reduction="none")
        p = logits.sigmoid()
        p_t = target * p + (1 - target) * (1 - p)
        alpha_t = target * self.alpha + (1 - target) * (1 - self.alpha)
        return (loss * alpha_t * (1.0 - p_t) ** self.gamma).mean()


class LayerTargets(NamedTuple):
    """Positive samples of one output level: indices into ``(bs, na, ny, nx)``, box target, anchor, class."""

    b: torch.Tensor  # image index in the batch
    a: torch.Tensor  # anchor index
    gj: torch.Tensor  # cell row, clamped to [0, ny - 1]
    gi: torch.Tensor  # cell column, clamped to [0, nx - 1]
    tbox: torch.Tensor  # (n, 4): centre relative to the cell corner, and wh, in grid units
    anchors: torch.Tensor  # (n, 2): matched anchor wh in grid units
    tcls: torch.Tensor  # class index


def match_targets(
    targets: torch.Tensor,
    anchors: torch.Tensor,
    ny: int,
    nx: int,
    anchor_t: float = 4.0,
    bias: float = NEIGHBOUR_BIAS,
) -> LayerTargets:
    """Assign batch targets ``(nt, 6)`` ``[img, cls, x, y, w, h]`` (normalised) to the anchors ``(na, 2)``
    (grid units) and cells of one ``ny x nx`` level.

    An (anchor, target) pair matches when both side ratios lie within ``1 / anchor_t .. anchor_t``. Each match
    takes its own cell plus the neighbour cell left/right and up/down on the side of the cell half its centre
    lies in (unless that would cross the border), so an interior target yields 3 cells.
    Output order: offset, then anchor, then target.
    """
    # Built from Python scalars only: no small host-to-device copies, which would stall a GPU queue.
    txywh = targets[:, 2:6].to(anchors.dtype, copy=True)  # (nt, 4) in grid units, in the anchors' precision
    txywh[:, 0::2] *= nx
    txywh[:, 1::2] *= ny
    ratio = txywh[None, :, 2:4] / anchors[:, None, :]  # (na, nt, 2)
    matched = torch.max(ratio, 1 / ratio).amax(-1) < anchor_t  # (na, nt)
    a, t = matched.nonzero(as_tuple=True)  # anchor-major order

    gxy = txywh[t, :2]
    gxy_inv = torch.stack((nx - gxy[:, 0], ny - gxy[:, 1]), 1)
    near_low = (gxy % 1 < bias) & (gxy > 1)  # (n, 2): left / upper neighbour
    near_high = (gxy_inv % 1 < bias) & (gxy_inv > 1)  # right / lower neighbour
    use = torch.stack(
        (torch.ones_like(near_low[:, 0]), near_low[:, 0], near_low[:, 1], near_high[:, 0], near_high[:, 1])
    )  # (5, n)
    o, k = use.nonzero(as_tuple=True)  # offset-major order: own cell, left, up, right, down
    offsets = torch.stack(((o == 1).float() - (o == 3).float(), (o == 2).float() - (o == 4).float()), 1) * bias

    gxy, a, t = gxy[k], a[k], t[k]
    gij = (gxy - offsets).long()
    gi = gij[:, 0].clamp(0, nx - 1)
    gj = gij[:, 1].clamp(0, ny - 1)
    cell = torch.stack((gi, gj), 1).float()
    tbox = torch.cat((gxy - cell, txywh[t, 2:4]), 1)
    return LayerTargets(
        b=targets[t, 0].long(),
        a=a,
        gj=gj,
        gi=gi,
        tbox=tbox,
        anchors=anchors[a],
        tcls=targets[t, 1].long(),
    )


def last_write_index(linear_index: torch.Tensor, size: int) -> torch.Tensor:
    """For each entry, the position of the last entry with the same value in ``[0, size)``.

    Writing ``values[last_write_index(idx)]`` at ``idx`` makes duplicate cells keep the last write on any
    device (plain ``index_put`` leaves the winner undefined on GPU), without sorting or a host sync.
    """
    pos = torch.arange(linear_index.numel(), device=linear_index.device)
    last = torch.full((size,), -1, dtype=pos.dtype, device=pos.device)
    last.scatter_reduce_(0, linear_index, pos, reduce="amax")
    return last[linear_index]


def check_classes(targets: torch.Tensor, nc: int) -> None:
    """Raise ValueError when a target class of ``targets`` ``(N, 6)`` lies outside ``[0, nc)``.

    The test is queued on the targets' device (``torch._assert_async``), so the host does not wait for the device on
    every batch: CPU targets fail at once with the ValueError, CUDA ones stop the run with a device-side assert at the
    device's next synchronisation (the datamodule's label check drops such labels before they get here). Devices
    without the asynchronous assert are checked on the host.
    """
    if not targets.shape[0]:
        return
    cls = targets[:, 1]
    bad = (cls < 0) | (cls >= nc)
    try:
        torch._assert_async(~bad.any(), "target class out of range")
    except RuntimeError:  # a failed CPU assert, or no asynchronous assert on this device (NotImplementedError)
        if bad.any():
            raise ValueError(f"target class {int(cls[bad][0])} out of range for a model with nc={nc}") from None


class YoloLoss:
    """YOLOv5 loss for a ``DetectionModel``; ``hyp`` must already be scaled by ``scale_loss_gains``.

    ``loss(preds, targets)`` with ``preds`` the raw train-mode outputs and ``targets`` ``(N, 6)`` returns
    ``(total * batch_size, tensor([lbox, lobj, lcls]).detach())``. Anchors are read from
    ``model.detect.anchors`` at every call. Not an ``nn.Module`` on purpose, so it holds the model without
    registering it twice.
    """

    def __init__(self, model: nn.Module, hyp: Mapping, label_smoothing: float):
        for key in ("box", "obj", "cls", "cls_pw", "obj_pw", "anchor_t", "fl_gamma"):
            if key not in hyp:
                raise KeyError(f"hyp is missing '{key}' needed by the loss")
        self.model = model
        self.hyp = dict(hyp)
        detect = model.detect
        self.nc, self.na, self.nl = detect.nc, detect.na, detect.nl
        self.balance = list(BALANCE_3) if self.nl == 3 else list(BALANCE_OTHER[: self.nl])
        self.cp, self.cn = smooth_bce(label_smoothing)
        self.bce_cls = BCEWithLogits(hyp["cls_pw"])
        self.bce_obj = BCEWithLogits(hyp["obj_pw"])
        if hyp["fl_gamma"] > 0:
            self.bce_cls = FocalLoss(self.bce_cls, hyp["fl_gamma"])
            self.bce_obj = FocalLoss(self.bce_obj, hyp["fl_gamma"])

    def build_targets(self, preds: Sequence[torch.Tensor], targets: torch.Tensor) -> list[LayerTargets]:
        """Positive samples per level for the current anchors (grid units) of ``model.detect``."""
        device = preds[0].device
        anchors = self.model.detect.anchors.detach().to(device, loss_dtype(preds))
        targets = targets.to(device)
        return [
            match_targets(targets, anchors[i], p.shape[2], p.shape[3], self.hyp["anchor_t"])
            for i, p in enumerate(preds)
        ]

    def __call__(self, preds: Sequence[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(preds) != self.nl:
            raise ValueError(f"expected {self.nl} prediction levels, got {len(preds)}")
        check_classes(targets, self.nc)
        device, dtype = preds[0].device, loss_dtype(preds)
        zero = torch.zeros((), device=device, dtype=dtype)
        lbox, lobj, lcls = zero, zero, zero
        for i, (p, lt) in enumerate(zip(preds, self.build_targets(preds, targets), strict=True)):
            p = p.to(dtype)
            tobj = torch.zeros(p.shape[:4], device=device, dtype=dtype)
            n = lt.b.shape[0]
            if n:
                ps = p[lt.b, lt.a, lt.gj, lt.gi]  # (n, no)
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * lt.anchors
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), lt.tbox)
                lbox = lbox + (1.0 - iou).mean()

                bs, na, ny, nx = tobj.shape
                linear = ((lt.b * na + lt.a) * ny + lt.gj) * nx + lt.gi
                tobj.view(-1)[linear] = iou.detach().clamp(0)[last_write_index(linear, tobj.numel())]

                if self.nc > 1:
                    tcls = torch.full_like(ps[:, 5:], self.cn)
                    tcls[torch.arange(n, device=device), lt.tcls] = self.cp
                    lcls = lcls + self.bce_cls(ps[:, 5:], tcls)
            lobj = lobj + self.bce_obj(p[..., 4], tobj) * self.balance[i]

        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.stack((lbox, lobj, lcls)).detach()
