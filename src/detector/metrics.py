"""Detection metrics with YOLOv5's definitions (matching, AP, P/R at max F1, fitness) plus COCO mAP.

The YOLOv5 numbers are computed here because no library gives its exact definitions (101-point trapezoid AP,
P and R read at the smoothed-max-F1 confidence, its matching order). The COCO numbers come from
``torchmetrics.detection.MeanAveragePrecision`` (pycocotools backend).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from detector.boxes import box_iou
from detector.confusion import confusion_matrix

log = logging.getLogger(__name__)

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)
FITNESS_WEIGHTS = {"mAP_0.5": 0.1, "mAP_0.5:0.95": 0.9}


def match_predictions(
    detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor = IOU_THRESHOLDS
) -> torch.Tensor:
    """Which detections are true positives at each IoU threshold, by YOLOv5's matching rule.

    ``detections`` ``(n, 6)`` ``[x1, y1, x2, y2, conf, cls]``; ``labels`` ``(m, 5)``
    ``[cls, x1, y1, x2, y2]``. Per threshold, candidate (label, detection) pairs have IoU >= threshold and the
    same class. They are ordered by IoU descending; each detection keeps its first (best-IoU) pair; of what is
    left, each label keeps the pair with the lowest detection index (YOLOv5 does not re-sort by IoU
    before this step, so with detections sorted by confidence, as NMS returns them, a label goes to
    its most confident claimant). Returns bool ``(n, len(iouv))`` on the CPU.
    """
    n, nt = detections.shape[0], len(iouv)
    correct = np.zeros((n, nt), dtype=bool)
    if n == 0 or labels.shape[0] == 0:
        return torch.from_numpy(correct)
    detections, labels = detections.detach().float().cpu(), labels.detach().float().cpu()
    iou = box_iou(labels[:, 1:5], detections[:, :4])  # (m, n)
    iou = iou * (labels[:, 0:1] == detections[:, 5]).to(iou.dtype)  # other-class pairs can never match
    thresholds = iouv.detach().float().cpu()
    # pairs that can match at the lowest threshold; higher thresholds are subsets of them
    li, di = (iou >= thresholds.min()).nonzero(as_tuple=True)
    li, di, pair_iou = li.numpy(), di.numpy(), iou[li, di].numpy()
    for k, thr in enumerate(thresholds.tolist()):
        sel = pair_iou >= np.float32(thr)
        lk, dk, ik = li[sel], di[sel], pair_iou[sel]
        if lk.size > 1:
            order = np.argsort(ik)[::-1]  # IoU descending, ties in numpy's order as YOLOv5 has them
            lk, dk = lk[order], dk[order]
            _, first = np.unique(dk, return_index=True)  # best label per detection; result sorted by detection
            lk, dk = lk[first], dk[first]
            _, first = np.unique(lk, return_index=True)  # first (lowest-index) detection per label
            dk = dk[first]
        correct[dk, k] = True
    return torch.from_numpy(correct)


def compute_ap(
    recall: np.ndarray, precision: np.ndarray, method: str = "interp"
) -> tuple[float, np.ndarray, np.ndarray]:
    """Area under the precision envelope of one PR curve; returns ``(ap, mpre, mrec)``.

    Recall is padded to ``[0, r, 1]`` and precision to ``[1, p, 0]``. ``interp``: trapezoid integral of the
    envelope sampled at 101 recall points (YOLOv5). ``continuous``: exact area at the points where recall
    changes.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    if method == "interp":
        x = np.linspace(0, 1, 101)
        ap = float(np.trapezoid(np.interp(x, mrec, mpre), x))
    elif method == "continuous":
        i = np.flatnonzero(mrec[1:] != mrec[:-1])
        ap = float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
    else:
        raise ValueError(f"unknown AP method {method!r}; use 'interp' or 'continuous'")
    return ap, mpre, mrec


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box filter of ``round(len(y) * f * 2) // 2 + 1`` taps, edge padded; output has ``len(y)`` points."""
    nf = round(len(y) * f * 2) // 2 + 1
    # np.convolve rather than scipy's running-sum filter: identical rounding keeps argmax ties as in YOLOv5
    yp = np.pad(y, nf // 2, mode="edge")
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


@dataclass(frozen=True)
class APResult:
    """Per-class output of :func:`ap_per_class`; rows follow ``classes`` (the unique target classes)."""

    classes: np.ndarray  # (c,) int
    n_labels: np.ndarray  # (c,) labels per class
    p: np.ndarray  # (c,) precision at the operating point
    r: np.ndarray  # (c,) recall at the operating point
    f1: np.ndarray  # (c,)
    ap: np.ndarray  # (c, t) AP per IoU threshold
    tp: np.ndarray  # (c,) round(r * n_labels)
    fp: np.ndarray  # (c,) round(tp / p - tp)
    conf_index: int  # index of the operating point on ``px``
    px: np.ndarray  # (1000,) confidence grid
    p_curve: np.ndarray  # (c, 1000) precision vs confidence at IoU 0.5
    r_curve: np.ndarray  # (c, 1000) recall vs confidence at IoU 0.5
    f1_curve: np.ndarray  # (c, 1000)
    pr_curve: np.ndarray  # (c, 1000) precision envelope vs recall (grid ``px``) at IoU 0.5, for plots


def ap_per_class(
    tp: np.ndarray,
    conf: np.ndarray,
    pred_cls: np.ndarray,
    target_cls: np.ndarray,
    method: str = "interp",
    smooth_fraction: float = 0.1,
    eps: float = 1e-16,
) -> APResult:
    """YOLOv5's per-class AP, and P/R/F1 at the confidence that maximises the smoothed mean F1.

    ``tp`` ``(n, t)`` bool per detection and IoU threshold (the first is 0.5); ``conf``, ``pred_cls``
    ``(n,)``; ``target_cls`` ``(m,)`` the class of every label. Classes are the unique target classes;
    predictions of other classes are ignored; classes without predictions get zeros.
    """
    tp = np.asarray(tp, dtype=np.float64)
    tp = tp[:, None] if tp.ndim == 1 else tp
    conf, pred_cls = np.asarray(conf, dtype=np.float64), np.asarray(pred_cls)
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_labels = np.unique(np.asarray(target_cls), return_counts=True)
    nc, nt, npx = len(classes), tp.shape[1], 1000
    px = np.linspace(0, 1, npx)
    ap = np.zeros((nc, nt))
    p_curve, r_curve, pr_curve = np.zeros((nc, npx)), np.zeros((nc, npx)), np.zeros((nc, npx))
    for ci, c in enumerate(classes):
        mask = pred_cls == c
        if not mask.any():
            continue
        ap[ci], p_curve[ci], r_curve[ci], pr_curve[ci] = _class_curves(
            tp[mask], conf[mask], n_labels[ci], px, method, eps
        )
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    idx = int(smooth(f1_curve.mean(0), smooth_fraction).argmax()) if nc else 0
    p, r, f1 = p_curve[:, idx], r_curve[:, idx], f1_curve[:, idx]
    tp_at = (r * n_labels).round()
    fp_at = (tp_at / (p + eps) - tp_at).round()
    curves = dict(px=px, p_curve=p_curve, r_curve=r_curve, f1_curve=f1_curve, pr_curve=pr_curve)
    return APResult(classes=classes.astype(int), n_labels=n_labels, p=p, r=r, f1=f1, ap=ap, tp=tp_at, fp=fp_at,
                    conf_index=idx, **curves)  # fmt: skip


def _class_curves(
    tp: np.ndarray, conf: np.ndarray, n_labels: int, px: np.ndarray, method: str, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One class's detections sorted by confidence -> (AP per IoU threshold, P and R at the confidences ``px``,
    precision at the recalls ``px`` of the first threshold)."""
    tpc = tp.cumsum(0)
    fpc = (1 - tp).cumsum(0)
    recall = tpc / (n_labels + eps)
    precision = tpc / (tpc + fpc)
    neg_conf = -conf  # increasing, as np.interp needs
    r_curve = np.interp(-px, neg_conf, recall[:, 0], left=0)
    p_curve = np.interp(-px, neg_conf, precision[:, 0], left=1)
    ap = np.zeros(tp.shape[1])
    pr_curve = np.zeros_like(px)
    for j in range(tp.shape[1]):
        ap[j], mpre, mrec = compute_ap(recall[:, j], precision[:, j], method)
        if j == 0:
            pr_curve = np.interp(px, mrec, mpre)
    return ap, p_curve, r_curve, pr_curve


def fitness(metrics: Mapping[str, float]) -> float:
    """YOLOv5 fitness: ``0.1 * mAP_0.5 + 0.9 * mAP_0.5:0.95`` (P and R weigh 0)."""
    return float(sum(w * float(metrics[k]) for k, w in FITNESS_WEIGHTS.items()))


@dataclass(frozen=True)
class ImageRecord:
    """One validated image: its order key, ``(n, 10)`` true positives, ``(n, 6)`` detections, ``(m, 5)`` labels."""

    key: tuple
    tp: np.ndarray
    det: np.ndarray
    labels: np.ndarray
    coco: bool  # counted in COCO mAP (the evaluator's coco_active when it was added)


class DetectionEvaluator:
    """Accumulates per-image detections and labels; computes YOLOv5 metrics and (optionally) COCO mAP.

    Inputs stay rank-local: under DDP, gather or evaluate on one rank. ``coco_max_dets`` is COCO's per-image
    detection cap (100 in the COCO protocol).
    """

    def __init__(
        self,
        nc: int,
        names: Mapping[int, str] | None = None,
        ap_method: str = "interp",
        coco: bool = True,
        iouv: torch.Tensor | None = None,
        coco_max_dets: int = 100,
    ) -> None:
        if nc < 1:
            raise ValueError(f"nc must be >= 1, got {nc}")
        if ap_method not in ("interp", "continuous"):
            raise ValueError(f"unknown ap_method {ap_method!r}; use 'interp' or 'continuous'")
        self.nc = nc
        self.names = dict(names) if names is not None else {i: str(i) for i in range(nc)}
        self.ap_method = ap_method
        self.iouv = (IOU_THRESHOLDS if iouv is None else iouv).detach().float().cpu()
        self._coco = None
        if coco:
            from torchmetrics.detection import MeanAveragePrecision

            self._coco = MeanAveragePrecision(
                box_format="xyxy",
                iou_type="bbox",
                backend="pycocotools",
                max_detection_thresholds=[1, 10, coco_max_dets],
                sync_on_compute=False,
            )
            self._coco.warn_on_many_detections = False  # more than coco_max_dets per image is expected here
        self.coco_active = self._coco is not None  # pycocotools is slow: callers may skip it for some epochs
        self.reset()

    def table(self, result: Mapping) -> str:
        """:func:`format_per_class_table` with this evaluator's class names."""
        return format_per_class_table(result, self.names)

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._records: list[ImageRecord] = []

    def update(
        self, preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], keys: Sequence[tuple] | None = None
    ) -> None:
        """Add a batch: per image ``(n, 6)`` detections and ``(m, 5)`` ``[cls, x1, y1, x2, y2]`` labels.

        ``keys`` (one sortable tuple per image) give the images' order for :meth:`compute`; by default the order
        of the calls. Under DDP each rank passes keys that restore the dataset order once gathered."""
        if len(preds) != len(targets):
            raise ValueError(f"update got {len(preds)} prediction tensors but {len(targets)} label tensors")
        if keys is not None and len(keys) != len(preds):
            raise ValueError(f"update got {len(keys)} keys for {len(preds)} images")
        for j, (det, lab) in enumerate(zip(preds, targets, strict=True)):
            det = det.detach().float().cpu().reshape(-1, 6)
            lab = lab.detach().float().cpu().reshape(-1, 5)
            lab_cls = lab[:, 0].long()
            if lab_cls.numel() and (lab_cls.min() < 0 or lab_cls.max() >= self.nc):
                raise ValueError(f"label class out of range [0, {self.nc}): {lab_cls.unique().tolist()}")
            key = tuple(keys[j]) if keys is not None else (len(self._records),)
            tp = match_predictions(det, lab, self.iouv).numpy()
            self._records.append(ImageRecord(key, tp, det.numpy(), lab.numpy(), self.coco_active))

    def records(self) -> list[ImageRecord]:
        """What :meth:`update` has stored (plain numpy, picklable): gather these across ranks."""
        return list(self._records)

    def replace_records(self, records: Sequence[ImageRecord]) -> None:
        """Evaluate these records instead (e.g. every rank's, gathered)."""
        self._records = list(records)

    def confusion_matrix(self, conf_thres: float, iou_thres: float) -> np.ndarray:
        """YOLOv5's confusion matrix of everything seen (see detector.confusion)."""
        return confusion_matrix(((r.det, r.labels) for r in self._records), self.nc, conf_thres, iou_thres)

    def compute(self) -> dict:
        """Metrics over everything seen, images in key order; zeros when there were no labels."""
        nt = len(self.iouv)
        records = sorted(self._records, key=lambda r: r.key)
        tp = np.concatenate([r.tp for r in records], 0) if records else np.zeros((0, nt), dtype=bool)
        conf = np.concatenate([r.det[:, 4] for r in records]) if records else np.zeros(0)
        pred_cls = np.concatenate([r.det[:, 5] for r in records]) if records else np.zeros(0)
        target_cls = np.concatenate([r.labels[:, 0] for r in records]) if records else np.zeros(0)
        images_per_class = np.zeros(self.nc, dtype=np.int64)
        for r in records:
            images_per_class[np.unique(r.labels[:, 0].astype(np.int64))] += 1
        res = ap_per_class(tp, conf, pred_cls, target_cls, method=self.ap_method)
        has_classes = len(res.classes) > 0
        map50 = float(res.ap[:, 0].mean()) if has_classes else 0.0
        map_all = float(res.ap.mean()) if has_classes else 0.0
        maps = np.full(self.nc, map_all)
        maps[res.classes] = res.ap.mean(1)
        out = {
            "precision": float(res.p.mean()) if has_classes else 0.0,
            "recall": float(res.r.mean()) if has_classes else 0.0,
            "mAP_0.5": map50,
            "mAP_0.5:0.95": map_all,
            "classes": res.classes,
            "ap50_per_class": res.ap[:, 0].copy(),
            "ap_per_class": res.ap.mean(1),
            "p_per_class": res.p,
            "r_per_class": res.r,
            "labels_per_class": res.n_labels,
            "images_per_class": images_per_class[res.classes],
            "maps": maps,
            "n_images": len(records),
            "n_labels": len(target_cls),
            "ap_result": res,
        }
        if self.coco_active:
            coco = {"map": torch.tensor(0.0), "map_50": torch.tensor(0.0)}
            coco_records = [r for r in records if r.coco]
            if len(target_cls) and coco_records:
                self._coco.reset()
                self._coco.update(
                    [{"boxes": torch.from_numpy(r.det[:, :4]), "scores": torch.from_numpy(r.det[:, 4]),
                      "labels": torch.from_numpy(r.det[:, 5]).long()} for r in coco_records],
                    [{"boxes": torch.from_numpy(r.labels[:, 1:5]), "labels": torch.from_numpy(r.labels[:, 0]).long()}
                     for r in coco_records],
                )  # fmt: skip
                coco = self._coco.compute()
            out["coco/mAP"] = _valid_or_zero(coco["map"])
            out["coco/mAP_50"] = _valid_or_zero(coco["map_50"])
        return out


def _valid_or_zero(x: torch.Tensor) -> float:
    """torchmetrics reports -1 (or nan) where a value is undefined; count that as 0."""
    v = float(x)
    return v if np.isfinite(v) and v >= 0 else 0.0


TABLE_HEADER = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
_TABLE_ROW = "{:>22}{:>11}{:>11}{:>11.3g}{:>11.3g}{:>11.3g}{:>11.3g}"


def format_all_row(result: Mapping) -> str:
    """The ``all`` row of YOLOv5's validation table (under :data:`TABLE_HEADER`)."""
    keys = ("n_images", "n_labels", "precision", "recall", "mAP_0.5", "mAP_0.5:0.95")
    return _TABLE_ROW.format("all", *(result[k] for k in keys))


def format_per_class_table(result: Mapping, names: Mapping[int, str] | None = None) -> str:
    """A YOLOv5-style table: class, images, instances, P, R, mAP50, mAP50-95; an ``all`` row first."""
    names = names or {}
    lines = [TABLE_HEADER, format_all_row(result)]
    for i, c in enumerate(result["classes"]):
        lines.append(
            _TABLE_ROW.format(
                str(names.get(int(c), int(c)))[:22],
                int(result["images_per_class"][i]),
                int(result["labels_per_class"][i]),
                result["p_per_class"][i],
                result["r_per_class"][i],
                result["ap50_per_class"][i],
                result["ap_per_class"][i],
            )
        )
    return "\n".join(lines)


def mean_batch_loss(losses: list[tuple[int, int, int, torch.Tensor]]) -> torch.Tensor:
    """YOLOv5's validation loss, the mean over batches of each batch's loss, from ``(batch, rank, images, loss)``.

    Under DDP the ranks' k-th batches together are a 1-process run's k-th batch (BlockShardSampler); their losses
    are averaged weighted by images, which approximates that batch's loss (box and class losses are means over
    matched targets, so the split is not exact). With one rank this is YOLOv5's mean exactly."""
    if not losses:
        return torch.zeros(3)
    groups: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
    for batch, rank, images, loss in losses:
        groups.setdefault(batch, []).append((rank, images, loss))
    means = []
    for batch in sorted(groups):
        parts = sorted(groups[batch], key=lambda part: part[0])
        if len(parts) == 1:
            means.append(parts[0][2])
            continue
        total = sum(images for _, images, _ in parts)
        means.append(sum(loss * images for _, images, loss in parts) / max(total, 1))
    return (torch.stack(means).sum(0) / len(means)).float()
