"""YoloLoss: gain scaling, target assignment, loss terms, label smoothing, focal loss, a tiny overfit run."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.nn import functional as F

from detector import CONF_DIR
from detector.loss import (
    BCEWithLogits,
    FocalLoss,
    YoloLoss,
    last_write_index,
    match_targets,
    scale_loss_gains,
    smooth_bce,
)
from detector.models import DetectionModel

HYP = {
    "lr0": 0.01,
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
}
TARGETS = torch.tensor(
    [
        [0, 0, 0.30, 0.40, 0.20, 0.30],
        [0, 1, 0.70, 0.60, 0.40, 0.30],
        [1, 2, 0.50, 0.50, 0.60, 0.70],
        [1, 1, 0.20, 0.80, 0.10, 0.10],
    ]
)


@lru_cache
def model_cfg(name: str = "yolov5n") -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(overrides=[f"+model={name}"]).model


def tiny_model(nc: int = 3, seed: int = 0) -> DetectionModel:
    torch.manual_seed(seed)
    return DetectionModel(model_cfg(), nc=nc)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs run fastest single-threaded (and avoid oversubscription on a shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_scale_loss_gains():
    hyp = dict(HYP)
    out = scale_loss_gains(hyp, nl=3, nc=20, imgsz=1280)
    assert hyp == HYP  # caller's hyp untouched
    assert out is not hyp
    assert out["box"] == pytest.approx(0.05)
    assert out["cls"] == pytest.approx(0.5 * 20 / 80)
    assert out["obj"] == pytest.approx(4.0)
    assert out["lr0"] == 0.01
    out4 = scale_loss_gains(hyp, nl=4, nc=80, imgsz=640)
    assert out4["box"] == pytest.approx(0.05 * 0.75)
    assert out4["cls"] == pytest.approx(0.5 * 0.75)
    assert out4["obj"] == pytest.approx(0.75)


def test_smooth_bce():
    assert smooth_bce(0.0) == (1.0, 0.0)
    assert smooth_bce(0.1) == pytest.approx((0.95, 0.05))


def test_loss_finite_positive_and_shapes():
    model = tiny_model()
    loss_fn = YoloLoss(model, scale_loss_gains(HYP, 3, 3, 64), 0.0)
    preds = model(torch.rand(2, 3, 64, 64))
    total, items = loss_fn(preds, TARGETS)
    assert total.dim() == 0 and items.shape == (3,)
    assert torch.isfinite(total) and total > 0
    assert (items > 0).all()
    assert not items.requires_grad and total.requires_grad
    torch.testing.assert_close(total.detach(), items.sum() * 2)
    total.backward()
    assert model.detect.m[0].bias.grad.abs().sum() > 0


def test_empty_targets():
    model = tiny_model()
    loss_fn = YoloLoss(model, scale_loss_gains(HYP, 3, 3, 64), 0.0)
    total, items = loss_fn(model(torch.rand(2, 3, 64, 64)), torch.zeros(0, 6))
    assert items[0] == 0 and items[2] == 0 and items[1] > 0
    assert torch.isfinite(total)


ANCHORS_1 = torch.tensor([[1.0, 1.0], [10.0, 10.0], [100.0, 100.0]])  # grid units: only anchor 0 fits a 1x1 box


def cells(lt) -> set[tuple[int, int]]:
    return set(zip(lt.gi.tolist(), lt.gj.tolist(), strict=True))


def test_interior_target_gets_three_cells():
    # on an 8x8 grid: centre (3.3, 4.7), size 1x1 cells
    t = torch.tensor([[0, 1, 3.3 / 8, 4.7 / 8, 1 / 8, 1 / 8]])
    lt = match_targets(t, ANCHORS_1, ny=8, nx=8)
    assert len(lt.b) == 3
    assert lt.a.tolist() == [0, 0, 0] and lt.tcls.tolist() == [1, 1, 1]
    assert cells(lt) == {(3, 4), (2, 4), (3, 5)}  # own, left (x frac < .5), lower (y frac > .5)
    by_cell = {(int(i), int(j)): box for i, j, box in zip(lt.gi, lt.gj, lt.tbox, strict=True)}
    torch.testing.assert_close(by_cell[(3, 4)], torch.tensor([0.3, 0.7, 1.0, 1.0]))
    torch.testing.assert_close(by_cell[(2, 4)], torch.tensor([1.3, 0.7, 1.0, 1.0]))
    torch.testing.assert_close(by_cell[(3, 5)], torch.tensor([0.3, -0.3, 1.0, 1.0]))
    torch.testing.assert_close(lt.anchors, ANCHORS_1[[0, 0, 0]])


@pytest.mark.parametrize(
    "xy,expected",
    [
        ((0.3, 4.7), {(0, 4), (0, 5)}),
        ((0.3, 0.3), {(0, 0)}),
        ((7.7, 7.7), {(7, 7)}),
        ((7.2, 0.3), {(7, 0), (6, 0)}),
    ],
)
def test_border_targets_get_fewer_cells(xy, expected):
    t = torch.tensor([[0, 0, xy[0] / 8, xy[1] / 8, 1 / 8, 1 / 8]])
    lt = match_targets(t, ANCHORS_1, ny=8, nx=8)
    assert cells(lt) == expected
    assert ((lt.gi >= 0) & (lt.gi < 8) & (lt.gj >= 0) & (lt.gj < 8)).all()


def test_cells_clamped_on_edge():
    t = torch.tensor([[0, 0, 1.0, 1.0, 1 / 8, 1 / 8]])  # centre exactly on the far corner
    lt = match_targets(t, ANCHORS_1, ny=8, nx=8)
    assert cells(lt) == {(7, 7)}
    torch.testing.assert_close(lt.tbox[0, :2], torch.tensor([1.0, 1.0]))


def test_anchor_t_excludes_bad_shapes():
    t = torch.tensor([[0, 0, 0.5, 0.5, 5 / 8, 1 / 8]])  # 5x1 cells vs a 1x1 anchor: ratio 5
    assert len(match_targets(t, ANCHORS_1, 8, 8, anchor_t=4.0).b) == 0
    assert len(match_targets(t, ANCHORS_1, 8, 8, anchor_t=6.0).b) > 0


def test_several_anchors_and_images():
    anchors = torch.tensor([[1.0, 1.0], [2.0, 2.0], [100.0, 100.0]])
    t = torch.tensor([[0, 0, 3.3 / 8, 4.7 / 8, 1.5 / 8, 1.5 / 8], [1, 2, 0.3 / 8, 0.3 / 8, 1.5 / 8, 1.5 / 8]])
    lt = match_targets(t, anchors, 8, 8)
    assert len(lt.b) == 2 * 3 + 2 * 1  # two anchors match each target
    assert sorted(lt.b.tolist()) == [0] * 6 + [1] * 2
    assert set(lt.a.tolist()) == {0, 1}


def test_loss_uses_current_anchors():
    model = tiny_model()
    loss_fn = YoloLoss(model, scale_loss_gains(HYP, 3, 3, 64), 0.0)
    preds = model(torch.rand(1, 3, 64, 64))
    t = TARGETS[:2]
    assert sum(len(lt.b) for lt in loss_fn.build_targets(preds, t)) > 0
    with torch.no_grad():
        model.detect.anchors *= 1000  # as if AutoAnchor wrote new anchors after the loss was made
    assert sum(len(lt.b) for lt in loss_fn.build_targets(preds, t)) == 0
    _, items = loss_fn(preds, t)
    assert items[0] == 0 and items[2] == 0


def test_placeholder_anchors_never_match_zero_width_anchor():
    torch.manual_seed(0)
    model = DetectionModel(model_cfg(), nc=3, anchors=3)
    loss_fn = YoloLoss(model, scale_loss_gains(HYP, 3, 3, 64), 0.0)
    preds = model(torch.rand(2, 3, 64, 64))
    assert all((lt.a != 0).all() for lt in loss_fn.build_targets(preds, TARGETS))  # anchor (0, 1) has w = 0
    _, items = loss_fn(preds, TARGETS)
    assert torch.isfinite(items).all()


def _reference_cells(targets, anchors, ny, nx, anchor_t=4.0):
    """Per-target loop written straight from the YOLOv5 description, to cross-check the vectorised version."""
    out = []
    for b, c, x, y, w, h in targets.tolist():
        gx, gy, gw, gh = x * nx, y * ny, w * nx, h * ny
        for a, (aw, ah) in enumerate(anchors.tolist()):
            r = (gw / aw, gh / ah)
            if max(max(v, 1 / v) for v in r) >= anchor_t:
                continue
            offs = [(0.0, 0.0)]
            if gx % 1 < 0.5 and gx > 1:
                offs.append((0.5, 0.0))
            if gy % 1 < 0.5 and gy > 1:
                offs.append((0.0, 0.5))
            if (nx - gx) % 1 < 0.5 and nx - gx > 1:
                offs.append((-0.5, 0.0))
            if (ny - gy) % 1 < 0.5 and ny - gy > 1:
                offs.append((0.0, -0.5))
            for ox, oy in offs:
                gi = min(max(int(gx - ox), 0), nx - 1)
                gj = min(max(int(gy - oy), 0), ny - 1)
                out.append((int(b), a, gj, gi, round(gx - gi, 4), round(gy - gj, 4), int(c)))
    return sorted(out)


def test_match_targets_equals_reference_loop():
    g = torch.Generator().manual_seed(3)
    n = 60
    targets = torch.cat(
        (
            torch.randint(0, 4, (n, 1), generator=g).float(),
            torch.randint(0, 5, (n, 1), generator=g).float(),
            torch.rand(n, 2, generator=g),
            torch.rand(n, 2, generator=g) * 0.5 + 0.01,
        ),
        1,
    )
    anchors = torch.tensor([[1.25, 1.625], [2.0, 3.75], [4.125, 2.875]])
    for ny, nx in [(8, 8), (6, 10)]:
        lt = match_targets(targets, anchors, ny, nx)
        got = sorted(
            (int(b), int(a), int(j), int(i), round(float(bx[0]), 4), round(float(bx[1]), 4), int(c))
            for b, a, j, i, bx, c in zip(lt.b, lt.a, lt.gj, lt.gi, lt.tbox, lt.tcls, strict=True)
        )
        assert got == _reference_cells(targets, anchors, ny, nx)
        assert len(got) > n  # most targets matched, several cells each


def test_perfect_prediction_gives_zero_box_loss_and_full_obj_target():
    model = tiny_model()
    loss_fn = YoloLoss(model, scale_loss_gains(HYP, 3, 3, 64), 0.0)
    preds = [torch.zeros(1, 3, s, s, 8) for s in (8, 4, 2)]
    t = torch.tensor([[0, 2, 0.41, 0.58, 0.25, 0.20]])
    for p, lt in zip(preds, loss_fn.build_targets(preds, t), strict=True):
        sig_xy = (lt.tbox[:, :2] + 0.5) / 2
        sig_wh = (lt.tbox[:, 2:] / lt.anchors).sqrt() / 2
        p[lt.b, lt.a, lt.gj, lt.gi, :4] = torch.logit(torch.cat((sig_xy, sig_wh), 1))
    _, items = loss_fn(preds, t)
    assert items[0] < 1e-5


def test_single_class_has_no_cls_loss():
    model = tiny_model(nc=1)
    loss_fn = YoloLoss(model, scale_loss_gains(HYP, 3, 1, 64), 0.0)
    t = TARGETS.clone()
    t[:, 1] = 0
    _, items = loss_fn(model(torch.rand(2, 3, 64, 64)), t)
    assert items[2] == 0 and items[0] > 0


def _manual_cls_loss(loss_fn, preds, targets, cp, cn):
    total = 0.0
    for p, lt in zip(preds, loss_fn.build_targets(preds, targets), strict=True):
        ps = p[lt.b, lt.a, lt.gj, lt.gi, 5:].float()
        tcls = torch.full_like(ps, cn)
        tcls[torch.arange(len(ps)), lt.tcls] = cp
        total += F.binary_cross_entropy_with_logits(ps, tcls)
    return total * loss_fn.hyp["cls"]


def test_label_smoothing_changes_cls_target():
    model = tiny_model()
    hyp = scale_loss_gains(HYP, 3, 3, 64)
    preds = [p.detach() for p in model(torch.rand(2, 3, 64, 64))]
    plain = YoloLoss(model, hyp, 0.0)
    smooth = YoloLoss(model, hyp, label_smoothing=0.2)
    assert (smooth.cp, smooth.cn) == pytest.approx((0.9, 0.1))
    _, items0 = plain(preds, TARGETS)
    _, items1 = smooth(preds, TARGETS)
    torch.testing.assert_close(items0[:2], items1[:2])  # box and obj untouched
    assert not torch.isclose(items0[2], items1[2])
    torch.testing.assert_close(items0[2], _manual_cls_loss(plain, preds, TARGETS, 1.0, 0.0))
    torch.testing.assert_close(items1[2], _manual_cls_loss(smooth, preds, TARGETS, 0.9, 0.1))


def test_pos_weight_and_balance_values():
    model = tiny_model()
    hyp = scale_loss_gains(dict(HYP, obj_pw=2.0), 3, 3, 64)
    loss_fn = YoloLoss(model, hyp, 0.0)
    assert loss_fn.balance == [4.0, 1.0, 0.4]
    preds = [p.detach() for p in model(torch.rand(1, 3, 64, 64))]
    _, items = loss_fn(preds, torch.zeros(0, 6))  # no targets: every obj target is 0
    pw = torch.tensor([2.0])
    expected = sum(
        F.binary_cross_entropy_with_logits(p[..., 4], torch.zeros_like(p[..., 4]), pos_weight=pw) * b
        for p, b in zip(preds, (4.0, 1.0, 0.4), strict=True)
    )
    torch.testing.assert_close(items[1], expected * hyp["obj"])


def test_focal_loss_formula_and_use():
    logits = torch.tensor([-2.0, 0.5, 3.0])
    target = torch.tensor([0.0, 1.0, 0.3])
    fl = FocalLoss(BCEWithLogits(1.0), gamma=1.5)
    p = logits.sigmoid()
    p_t = target * p + (1 - target) * (1 - p)
    alpha = target * 0.25 + (1 - target) * 0.75
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    torch.testing.assert_close(fl(logits, target), (bce * alpha * (1 - p_t) ** 1.5).mean())

    model = tiny_model()
    preds = [p.detach() for p in model(torch.rand(2, 3, 64, 64))]
    _, plain = YoloLoss(model, scale_loss_gains(HYP, 3, 3, 64), 0.0)(preds, TARGETS)
    focal_fn = YoloLoss(model, scale_loss_gains(dict(HYP, fl_gamma=1.5), 3, 3, 64), 0.0)
    assert isinstance(focal_fn.bce_obj, FocalLoss) and isinstance(focal_fn.bce_cls, FocalLoss)
    _, focal = focal_fn(preds, TARGETS)
    torch.testing.assert_close(plain[0], focal[0])
    assert focal[1] < plain[1] and focal[2] < plain[2]


def test_last_write_wins_on_duplicate_cells():
    assert last_write_index(torch.tensor([5, 3, 5, 3, 7]), 8).tolist() == [2, 3, 2, 3, 4]


def test_class_out_of_range_message():
    model = tiny_model(nc=3)
    loss_fn = YoloLoss(model, scale_loss_gains(HYP, 3, 3, 64), 0.0)
    bad = TARGETS.clone()
    bad[0, 1] = 3
    with pytest.raises(ValueError, match="target class 3 out of range"):
        loss_fn(model(torch.rand(2, 3, 64, 64)), bad)


def test_duplicate_target_obj_is_last_iou():
    model = tiny_model()
    loss_fn = YoloLoss(model, scale_loss_gains(HYP, 3, 3, 64), 0.0)
    preds = [p.detach() for p in model(torch.rand(1, 3, 64, 64))]
    one = torch.tensor([[0, 0, 0.51, 0.52, 0.30, 0.30]])
    both = torch.tensor([[0, 0, 0.53, 0.54, 0.20, 0.40], [0, 0, 0.51, 0.52, 0.30, 0.30]])  # same cells
    _, items_one = loss_fn(preds, one)
    _, items_both = loss_fn(preds, both)
    # obj targets are identical: the second box overwrote the first in every shared cell
    torch.testing.assert_close(items_one[1], items_both[1])


def test_loss_under_autocast():
    model = tiny_model()
    loss_fn = YoloLoss(model, scale_loss_gains(HYP, 3, 3, 64), 0.0)
    x = torch.rand(2, 3, 64, 64)
    ref, _ = loss_fn(model(x), TARGETS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model(x)
        total, items = loss_fn(preds, TARGETS)
    assert preds[0].dtype == torch.bfloat16
    assert total.dtype == torch.float32 and torch.isfinite(items).all()
    assert abs(total.item() - ref.item()) / ref.item() < 0.1
    total.backward()


def test_overfit_one_batch():
    model = tiny_model(nc=3, seed=0)
    loss_fn = YoloLoss(model, scale_loss_gains(HYP, 3, 3, 64), 0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.002)
    torch.manual_seed(1)
    imgs = torch.rand(2, 3, 64, 64)
    history = []
    for _ in range(50):
        total, _ = loss_fn(model(imgs), TARGETS)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert min(history[-5:]) < history[0] / 4, history  # about 5.6x with this seed
    assert sum(history[-5:]) < sum(history[:5]) / 3
