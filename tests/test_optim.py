"""Optimizer groups, batch-size rules, LR lambdas, the scheduler lag and the planned schedule."""

import logging

import pytest
import torch
from torch import nn

from detector.optim import auto_iterations, build_optimizer, resolve_optimizer, scaled_weight_decay, split_param_groups
from detector.schedule import accumulate_for


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
    assert scaled_weight_decay(5e-4, bs, 64) == pytest.approx(5e-4 * factor, rel=1e-12)


def test_accumulate_rejects_bad_batch():
    with pytest.raises(ValueError, match="batch_size"):
        accumulate_for(0, 64)


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
