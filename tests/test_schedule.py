"""TrainingSchedule: YOLOv5's warmup, epoch LR schedule and accumulation, checked against YOLOv5's loop written out."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from detector.optim import build_optimizer
from detector.schedule import CosineLambda, LinearLambda, TrainingSchedule, lr_lambda

NB, EPOCHS, BATCH, NBS = 8, 16, 16, 64  # nbs/batch = 4; nw = max(round(3 * 8), 100) = 100 -> ends in epoch 12
HYP = {"lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "warmup_epochs": 3.0, "warmup_momentum": 0.8, "wbias": 0.1}


def schedule(**kw) -> TrainingSchedule:
    values = dict(
        nb=NB, epochs=EPOCHS, batch_size=BATCH, lr0=HYP["lr0"], momentum=HYP["momentum"],
        warmup_bias_lr=HYP["wbias"], lrf=HYP["lrf"], warmup_epochs=HYP["warmup_epochs"],
        warmup_momentum=HYP["warmup_momentum"], nbs=NBS, cos_lr=False, min_warmup_iters=100, ramp_adam_beta1=True,
    )  # fmt: skip
    return TrainingSchedule(**(values | kw))


def yolov5_reference(lf, nb: int, epochs: int, bias_lr: float, sgd: bool = True):
    """YOLOv5's loop written out (reference §1-2): per-iteration lr of each group, momentum, accumulate."""
    params = [nn.Parameter(torch.zeros(1)) for _ in range(3)]
    lr0, m = HYP["lr0"], HYP["momentum"]
    groups = [{"params": [p]} for p in params]
    opt = torch.optim.SGD(groups, lr=lr0, momentum=m, nesterov=True) if sgd else torch.optim.AdamW(groups, lr=lr0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lf)
    sched.last_epoch = -1
    nw = max(round(HYP["warmup_epochs"] * nb), 100)
    accumulate = max(round(NBS / BATCH), 1)
    lrs, moms, accs = [], [], []
    for epoch in range(epochs):
        for i in range(nb):
            ni = i + nb * epoch
            if ni <= nw:
                xi = [0, nw]
                accumulate = max(1, np.interp(ni, xi, [1, NBS / BATCH]).round())
                for j, x in enumerate(opt.param_groups):
                    x["lr"] = np.interp(ni, xi, [bias_lr if j == 0 else 0.0, x["initial_lr"] * lf(epoch)])
                    moms_j = np.interp(ni, xi, [HYP["warmup_momentum"], m])
                    if "momentum" in x:
                        x["momentum"] = moms_j
            lrs.append([x["lr"] for x in opt.param_groups])
            moms.append(opt.param_groups[0]["momentum"] if sgd else moms_j if ni <= nw else m)
            accs.append(accumulate)
        opt.step()
        sched.step()
    return np.array(lrs), np.array(moms), np.array(accs)


def test_lambdas_values_and_pickling():
    lin, cos = LinearLambda(10, 0.1), CosineLambda(10, 0.1)
    assert [lin(x) for x in (0, 5, 9, 10)] == pytest.approx([1.0, 0.55, 0.19, 0.1])
    assert [cos(x) for x in (0, 5, 10)] == pytest.approx([1.0, 0.55, 0.1])
    assert cos(2) == pytest.approx(((1 - math.cos(math.pi * 0.2)) / 2) * (0.1 - 1) + 1)
    assert isinstance(lr_lambda(10, 0.1, cos=True), CosineLambda)
    assert isinstance(lr_lambda(10, 0.1, cos=False), LinearLambda)
    assert pickle.loads(pickle.dumps(cos))(3) == cos(3)


@pytest.mark.parametrize("cos", [False, True], ids=["linear", "cosine"])
def test_plan_equals_yolov5_loop_every_iteration(cos):
    s = schedule(cos_lr=cos)
    plan = s.plan()
    ref_lr, ref_mom, ref_acc = yolov5_reference(lr_lambda(EPOCHS, HYP["lrf"], cos), NB, EPOCHS, HYP["wbias"])
    assert plan.lr.shape == (EPOCHS * NB, 3) and plan.nw == s.nw == 100 and s.nw // NB == 12
    np.testing.assert_array_equal(plan.lr, ref_lr)  # the same float operations, so exactly equal
    np.testing.assert_array_equal(plan.momentum, ref_mom)
    np.testing.assert_array_equal(plan.accumulate, ref_acc)
    # The shape of the curve: warmup spans 12.5 epochs, then the one-epoch lag.
    lr, lf = plan.lr, s.lf
    assert lr[0].tolist() == [0.1, 0.0, 0.0] and plan.accumulate[0] == 1 and plan.momentum[0] == 0.8
    np.testing.assert_allclose(lr[100 : 13 * NB], HYP["lr0"] * lf(12), atol=1e-15)  # rest of epoch 12
    np.testing.assert_allclose(lr[13 * NB : 14 * NB], HYP["lr0"] * lf(12), atol=1e-15)  # epoch 13: lf(12)
    np.testing.assert_allclose(lr[15 * NB :], HYP["lr0"] * lf(14), atol=1e-15)  # epoch 15: lf(14)
    assert set(plan.accumulate[100:].tolist()) == {4} and np.all(plan.momentum[100:] == 0.937)


def test_reference_example_nb32_30_epochs():
    """Reference §2: nb=32, 30 epochs, scratch-low, linear."""
    s = schedule(nb=32, epochs=30)
    plan, lf = s.plan(), s.lf
    assert plan.lr.shape == (960, 3) and plan.nw == 100
    assert plan.lr[100, 0] == pytest.approx(0.00901, abs=1e-12)
    np.testing.assert_allclose(plan.lr[101:128], 0.01 * lf(3), atol=1e-15)  # rest of epoch 3
    np.testing.assert_allclose(plan.lr[128:160], 0.00901, atol=1e-12)  # epoch 4: lf(3) (lag)
    np.testing.assert_allclose(plan.lr[160:192], 0.00868, atol=1e-12)  # epoch 5: lf(4)
    np.testing.assert_allclose(plan.lr[-32:], 0.01 * lf(28), atol=1e-15)  # last epoch 29: lf(28)
    assert plan.lr[40, 1] == pytest.approx(0.4 * 0.01 * lf(1))
    assert plan.lr[40, 0] == pytest.approx(0.1 + 0.4 * (0.01 * lf(1) - 0.1))
    v = s.at(50)
    assert v.momentum == pytest.approx(0.8685) and v.accumulate == 2  # interp 2.5 -> round-half-even 2
    assert np.all(np.diff(plan.accumulate[:101]) >= 0)


def test_warmup_length():
    assert schedule(nb=32).nw == 100
    assert schedule(nb=100).nw == 300
    assert schedule(nb=1000, warmup_epochs=0.0, min_warmup_iters=0).nw == 0
    assert schedule(nb=8, epochs=5).plan().lr[-1, 1] == pytest.approx(39 / 100 * 0.01 * LinearLambda(5, 0.01)(4))


def test_optimizer_steps_hand_checked():
    # nb=4, 3 epochs, bs 16 (nbs/bs = 4), nw=5: accumulate 1,2,2,3,3,4 then 4 -> steps at ni = 0, 2, 6, 10.
    s = schedule(nb=4, epochs=3, warmup_epochs=1.0, min_warmup_iters=5)
    assert s.plan().accumulate.tolist() == [1, 2, 2, 3, 3, 4, 4, 4, 4, 4, 4, 4]
    assert s.optimizer_steps() == 4
    steps, last = [], -1
    for ni in range(12):
        if s.steps_at(ni, last):
            steps, last = [*steps, ni], ni
    assert steps == [0, 2, 6, 10]
    # No warmup ramp effect when batch_size >= nbs: a step every batch.
    assert schedule(nb=10, epochs=3, batch_size=64).optimizer_steps() == 30


def test_apply_sets_sgd_momentum_and_adam_beta1():
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    s = schedule(lr0=0.01, warmup_bias_lr=0.0)
    sgd = build_optimizer(net, "SGD", 0.01, 0.937, 5e-4)
    values = s.apply(sgd.param_groups, 50)
    assert [g["lr"] for g in sgd.param_groups] == list(values.lrs)
    assert all(g["momentum"] == values.momentum for g in sgd.param_groups)
    ref_lr, ref_mom, _ = yolov5_reference(s.lf, NB, 14, 0.0, sgd=False)
    adam = build_optimizer(net, "AdamW", 0.01, 0.937, 5e-4)
    for ni in range(14 * NB):
        values = s.apply(adam.param_groups, ni)
        np.testing.assert_array_equal(values.lrs, ref_lr[ni])
        assert adam.param_groups[2]["betas"] == (ref_mom[ni], 0.999)  # beta1 ramped 0.8 -> 0.937
    fixed = build_optimizer(net, "Adam", 0.01, 0.937, 5e-4)
    replace(s, ramp_adam_beta1=False).apply(fixed.param_groups, 0)
    assert fixed.param_groups[0]["betas"] == (0.937, 0.999)  # YOLOv5: beta1 untouched
    with pytest.raises(ValueError, match="3 param groups"):
        s.apply(sgd.param_groups[:2], 0)


@pytest.mark.parametrize("key", ["nb", "epochs", "batch_size", "nbs"])
def test_rejects_non_positive_sizes(key):
    with pytest.raises(ValueError, match=key):
        schedule(**{key: 0})
