"""Optimizer groups, batch-size rules, LR lambdas, the scheduler lag and the planned schedule."""

import logging
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from detector.optim import (
    CosineLambda,
    LinearLambda,
    accumulate_for,
    auto_iterations,
    build_optimizer,
    build_scheduler,
    count_optimizer_steps,
    lr_lambda,
    planned_schedule,
    resolve_optimizer,
    scaled_weight_decay,
    split_param_groups,
    warmup_iters,
    warmup_state,
)


def small_net() -> nn.Module:
    """Two conv+BN blocks, a conv with bias, a Linear and a LayerNorm (input 3x4x4)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 1, bias=False),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 2, 1),  # weight + bias
        nn.Flatten(),
        nn.Linear(8, 5),
        nn.LayerNorm(5),
    )


def test_split_param_groups_sizes_and_members():
    net = small_net()
    biases, decayed, norm = split_param_groups(net)
    # biases: 2 BN + conv + linear + layernorm = 5; decayed: 3 conv + linear = 4; norm: 2 BN + LN = 3
    assert (len(biases), len(decayed), len(norm)) == (5, 4, 3)
    assert biases[0] is net[1].bias and biases[-1] is net[7].bias
    assert [id(p) for p in decayed] == [
        id(net[0].weight),
        id(net[2].weight),
        id(net[4].weight),
        id(net[6].weight),
    ]
    assert [id(p) for p in norm] == [id(net[1].weight), id(net[3].weight), id(net[7].weight)]


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "sgd", "adamw"])
def test_build_optimizer_groups(name, caplog):
    net = small_net()
    with caplog.at_level(logging.INFO, logger="detector.optim"):
        opt = build_optimizer(net, name, lr=0.01, momentum=0.937, decay=5e-4)
    g = opt.param_groups
    assert [len(x["params"]) for x in g] == [5, 4, 3]
    assert [x["weight_decay"] for x in g] == [0.0, 5e-4, 0.0]
    assert all(x["lr"] == 0.01 and x["initial_momentum"] == 0.937 for x in g)
    if name.lower() == "sgd":
        assert isinstance(opt, torch.optim.SGD)
        assert all(x["nesterov"] and x["momentum"] == 0.937 for x in g)
    else:
        assert type(opt) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name.lower()]
        assert all(tuple(x["betas"]) == (0.937, 0.999) for x in g)
    assert "with parameter groups 3 weight(decay=0.0), 4 weight(decay=0.0005), 5 bias" in caplog.text


def test_build_optimizer_unknown_name():
    with pytest.raises(ValueError, match="unknown optimizer 'RMSProp'.*SGD, Adam, AdamW"):
        build_optimizer(small_net(), "RMSProp")
    with pytest.raises(ValueError, match="resolve_optimizer"):
        build_optimizer(small_net(), "auto")


def test_optimizer_steps_only_decay_group_1():
    """One SGD step from zero gradient: only group-1 weights shrink (decay), others stay."""
    net = small_net()
    opt = build_optimizer(net, "SGD", lr=0.1, momentum=0.0, decay=0.5)
    before = [[p.detach().clone() for p in g["params"]] for g in opt.param_groups]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for j, g in enumerate(opt.param_groups):
        for p, p0 in zip(g["params"], before[j], strict=True):
            expected = p0 * (1 - 0.1 * 0.5) if j == 1 else p0
            torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("bs, acc, factor", [(8, 8, 1.0), (16, 4, 1.0), (24, 3, 1.125), (48, 1, 0.75), (128, 1, 2.0)])
def test_accumulate_and_weight_decay_factor(bs, acc, factor):
    assert accumulate_for(bs, 64) == acc
    assert scaled_weight_decay(5e-4, bs, acc, 64) == pytest.approx(5e-4 * factor, rel=1e-12)


def test_accumulate_rejects_bad_batch():
    with pytest.raises(ValueError, match="batch_size"):
        accumulate_for(0)


def test_resolve_optimizer_auto():
    assert auto_iterations(1000, 16, 64, 100) == 16 * 100
    small = resolve_optimizer("auto", 0.01, 0.937, 0.1, nc=80, iterations=10000)
    assert (small.name, small.lr, small.momentum, small.warmup_bias_lr) == ("AdamW", 0.000119, 0.9, 0.0)
    assert resolve_optimizer("auto", 0.01, 0.937, 0.1, nc=5, iterations=500).lr == 0.001111
    big = resolve_optimizer("auto", 0.02, 0.937, 0.1, nc=80, iterations=10001)
    assert (big.name, big.lr, big.momentum, big.warmup_bias_lr) == ("SGD", 0.01, 0.9, 0.0)
    same = resolve_optimizer("adam", 0.001, 0.9, 0.05, nc=80, iterations=1)
    assert (same.name, same.lr, same.momentum, same.warmup_bias_lr) == ("Adam", 0.001, 0.9, 0.05)
    with pytest.raises(ValueError, match="choose one of SGD, Adam, AdamW, auto"):
        resolve_optimizer("lion", 0.01, 0.9, 0.1, nc=1, iterations=1)


def test_lambdas_values_and_pickling():
    lin, cos = LinearLambda(10, 0.1), CosineLambda(10, 0.1)
    assert [lin(x) for x in (0, 5, 9, 10)] == pytest.approx([1.0, 0.55, 0.19, 0.1])
    assert [cos(x) for x in (0, 5, 10)] == pytest.approx([1.0, 0.55, 0.1])
    assert cos(2) == pytest.approx(((1 - math.cos(math.pi * 0.2)) / 2) * (0.1 - 1) + 1)
    assert isinstance(lr_lambda(10, 0.1, cos=True), CosineLambda)
    assert isinstance(lr_lambda(10, 0.1, cos=False), LinearLambda)
    assert pickle.loads(pickle.dumps(cos))(3) == cos(3)


@pytest.mark.parametrize("cos", [False, True])
def test_build_scheduler_one_epoch_lag_and_state_dict(cos):
    epochs, lr0 = 6, 0.01
    lf = lr_lambda(epochs, 0.2, cos)
    opt = build_optimizer(small_net(), "SGD", lr=lr0, momentum=0.9, decay=0.0)
    sched = build_scheduler(opt, lf)
    seen = []
    for _epoch in range(epochs):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    expected = [[lr0 * lf(max(k - 1, 0))] * 3 for k in range(epochs)]
    np.testing.assert_allclose(seen, expected, rtol=0, atol=1e-15)
    # The callable lambda survives a state_dict round trip (resume).
    state = sched.state_dict()
    assert state["lr_lambdas"][0] == {"epochs": epochs, "lrf": 0.2}
    sched2 = build_scheduler(build_optimizer(small_net(), "SGD", lr0, 0.9, 0.0), lr_lambda(1, 0.5, cos))
    sched2.load_state_dict(state)
    assert sched2.lr_lambdas[0](3) == lf(3) and sched2.last_epoch == epochs - 1


def test_warmup_iters_and_state():
    assert warmup_iters(3.0, 32) == 100
    assert warmup_iters(3.0, 100) == 300
    assert warmup_iters(0.0, 1000, min_iters=0) == 0
    lf = LinearLambda(30, 0.01)
    s0 = warmup_state(0, 100, 0, lf, [0.01] * 3, 0.1, 0.8, 0.937, 64, 16)
    assert s0.lrs == (0.1, 0.0, 0.0) and s0.momentum == 0.8 and s0.accumulate == 1
    s = warmup_state(50, 100, 1, lf, [0.01] * 3, 0.1, 0.8, 0.937, 64, 16)
    end = 0.01 * lf(1)
    assert s.lrs == pytest.approx((0.05 + end / 2, end / 2, end / 2), abs=1e-15)
    assert s.momentum == pytest.approx(0.8685) and s.accumulate == 2  # interp 2.5 -> round-half-even 2
    s_end = warmup_state(100, 100, 3, lf, [0.01] * 3, 0.1, 0.8, 0.937, 64, 16)
    assert s_end.lrs == pytest.approx((0.01 * lf(3),) * 3, abs=1e-15) and s_end.accumulate == 4
    with pytest.raises(ValueError, match="ni <= nw"):
        warmup_state(101, 100, 3, lf, [0.01] * 3, 0.1, 0.8, 0.937, 64, 16)


def test_planned_schedule_reference_example():
    """Reference §2: nb=32, 30 epochs, scratch-low, linear."""
    lf = LinearLambda(30, 0.01)
    plan = planned_schedule(32, 30, 0.01, lf, 3.0, 0.1, 0.8, 0.937, batch_size=16)
    assert plan.lr.shape == (960, 3) and plan.nw == 100 and 100 // 32 == 3
    np.testing.assert_allclose(plan.lr[100], [0.01 * lf(3)] * 3, atol=1e-15)
    assert plan.lr[100, 0] == pytest.approx(0.00901, abs=1e-12)
    np.testing.assert_allclose(plan.lr[101:128], 0.01 * lf(3), atol=1e-15)  # rest of epoch 3
    np.testing.assert_allclose(plan.lr[128:160], 0.00901, atol=1e-12)  # epoch 4: lf(3) (lag)
    np.testing.assert_allclose(plan.lr[160:192], 0.00868, atol=1e-12)  # epoch 5: lf(4)
    np.testing.assert_allclose(plan.lr[-32:], 0.01 * lf(28), atol=1e-15)  # last epoch 29: lf(28)
    # Warmup: bias falls from 0.1, others rise from 0, towards the current epoch's target.
    assert plan.lr[0].tolist() == [0.1, 0.0, 0.0]
    assert plan.lr[40, 1] == pytest.approx(0.4 * 0.01 * lf(1))
    assert plan.lr[40, 0] == pytest.approx(0.1 + 0.4 * (0.01 * lf(1) - 0.1))
    assert plan.momentum[0] == 0.8 and np.all(plan.momentum[100:] == 0.937)
    assert plan.accumulate[0] == 1 and np.all(plan.accumulate[100:] == 4)
    assert np.all(np.diff(plan.accumulate[:101]) >= 0)


def test_planned_schedule_warmup_longer_than_run_and_per_group_lr():
    plan = planned_schedule(8, 5, [0.02, 0.01, 0.01], LinearLambda(5, 0.1), min_iters=100)
    assert plan.lr.shape == (40, 3)
    assert plan.lr[-1, 1] == pytest.approx(39 / 100 * 0.01 * LinearLambda(5, 0.1)(4))
    assert plan.lr[0, 0] == 0.1 and plan.lr[0, 1] == 0.0


def test_count_optimizer_steps_hand_checked():
    # nb=4, 3 epochs, bs 16 (nbs/bs = 4), nw=5: accumulate 1,2,2,3,3,4 then 4.
    # steps at ni = 0, 2, 6, 10 -> 4.
    assert count_optimizer_steps(4, 3, 16, 64, 5) == 4
    # No warmup ramp effect when bs >= nbs: a step every batch.
    assert count_optimizer_steps(10, 3, 64, 64, 100) == 30
