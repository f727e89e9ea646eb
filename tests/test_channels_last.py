"""channels_last (NHWC) changes how the model's tensors are laid out, not what a training step computes."""

from __future__ import annotations

import torch

from detector.train import build_module
from tests.helpers import compose_train


def step(cfg, imgs: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype):
    torch.manual_seed(0)
    module = build_module(cfg, 3, {0: "a", 1: "b", 2: "c"}).to(dtype)
    x = module._pixels(imgs)
    loss, items = module.loss_fn(module.model(x), targets)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in module.model.parameters()])
    return module, x, items.detach(), grads


def test_nhwc_training_step_matches_the_contiguous_one():
    gen = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=gen)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.3, 0.6, 0.2, 0.2], [1, 1, 0.7, 0.2, 0.4, 0.3]])
    cfg = {flag: compose_train(["imgsz=64", f"channels_last={flag}"]) for flag in (True, False)}
    nhwc, x_nhwc, items_nhwc, grads_nhwc = step(cfg[True], imgs, targets, torch.float64)
    nchw, x_nchw, items_nchw, grads_nchw = step(cfg[False], imgs, targets, torch.float64)
    conv = nhwc.model.model[0].conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert x_nhwc.is_contiguous(memory_format=torch.channels_last) and x_nchw.is_contiguous()
    assert torch.equal(x_nhwc, x_nchw)  # the same pixel values
    # in float64 the two layouts agree to rounding (1e-13 measured): the same arithmetic
    torch.testing.assert_close(items_nhwc, items_nchw, rtol=1e-12, atol=0)
    assert (grads_nhwc - grads_nchw).norm() / grads_nchw.norm() < 1e-10
