"""DetectionModel: config composition, parameter counts, Detect shapes and decode, anchors, bias priors."""

from __future__ import annotations

import copy
import math
from functools import lru_cache

import pytest
import torch
from hydra import compose, initialize_config_dir

from detector import CONF_DIR
from detector.models import Detect, DetectionModel, check_anchor_order

DEFAULT_ANCHORS_PX = torch.tensor(
    [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]],
    dtype=torch.float32,
)


@lru_cache
def model_cfg(name: str) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(overrides=[f"+model={name}"])
    return cfg.model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs run fastest single-threaded (and avoid oversubscription on a shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("size", ["n", "s", "m", "l", "x"])
def test_config_composes(size):
    cfg = model_cfg(f"yolov5{size}")
    assert cfg.name == f"yolov5{size}"
    for key in ("depth_multiple", "width_multiple", "anchors", "backbone", "head"):
        assert key in cfg
    assert len(cfg.backbone) == 10 and len(cfg.head) == 15
    assert torch.equal(torch.tensor(cfg.anchors, dtype=torch.float32), DEFAULT_ANCHORS_PX)


@pytest.mark.parametrize(
    "size,expected",
    [("n", 1_872_157), ("s", 7_235_389), ("m", 21_190_557), ("l", 46_563_709), ("x", 86_749_405)],
)
def test_parameter_counts(size, expected):
    model = DetectionModel(model_cfg(f"yolov5{size}"), nc=80)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_build_details():
    model = DetectionModel(model_cfg("yolov5n"), nc=80)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert model.detect is model.model[-1]
    det = model.detect
    assert (det.nl, det.na, det.no, det.nc) == (3, 3, 85, 80)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-3 and bn.momentum == 0.03 for bn in bns)
    # the stride probe must not have touched BatchNorm statistics
    assert all(int(bn.num_batches_tracked) == 0 for bn in bns)
    acts = [m for m in model.modules() if isinstance(m, torch.nn.SiLU)]
    assert acts and all(a.inplace for a in acts)
    assert model.training


@pytest.mark.parametrize("hw", [(64, 64), (96, 128)])
def test_forward_shapes(hw):
    h, w = hw
    nc = 3
    model = DetectionModel(model_cfg("yolov5n"), nc=nc)
    x = torch.rand(2, 3, h, w)
    raw = model(x)
    expected = [(2, 3, h // s, w // s, nc + 5) for s in (8, 16, 32)]
    assert [tuple(r.shape) for r in raw] == expected

    model.eval()
    with torch.no_grad():
        decoded, raw_eval = model(x)
    assert [tuple(r.shape) for r in raw_eval] == expected
    n = sum(3 * (h // s) * (w // s) for s in (8, 16, 32))
    assert decoded.shape == (2, n, nc + 5)
    assert decoded.dtype == torch.float32
    assert (decoded[..., 4:] >= 0).all() and (decoded[..., 4:] <= 1).all()


def test_decode_values_and_grid_cache():
    model = DetectionModel(model_cfg("yolov5n"), nc=2).eval()
    det = model.detect
    for h, w in [(64, 64), (96, 128), (64, 64)]:  # grids rebuilt when the size changes
        with torch.no_grad():
            decoded, raw = model(torch.rand(1, 3, h, w))
        assert det._grids[0].shape[2:4] == (h // 8, w // 8)
        # level 1 (stride 16), anchor 2, cell (row 1, col 2)
        a, j, i, s = 2, 1, 2, 16.0
        r = raw[1][0, a, j, i].sigmoid()
        ny1, nx1 = h // 8, w // 8
        flat = 3 * ny1 * nx1 + (a * (h // 16) + j) * (w // 16) + i
        got = decoded[0, flat]
        expected_xy = (r[:2] * 2 - 0.5 + torch.tensor([i, j])) * s
        expected_wh = (r[2:4] * 2) ** 2 * DEFAULT_ANCHORS_PX[1, a]
        torch.testing.assert_close(got[:2], expected_xy)
        torch.testing.assert_close(got[2:4], expected_wh)
        torch.testing.assert_close(got[4:], r[4:])


def test_bias_init():
    nc = 80
    model = DetectionModel(model_cfg("yolov5n"), nc=nc)
    det = model.detect
    before = [conv.bias.detach().clone().view(det.na, -1) for conv in det.m]
    det.initialize_biases()  # adds the priors once more: the difference is exactly the prior
    for k, (conv, s) in enumerate(zip(det.m, (8, 16, 32), strict=True)):
        after = conv.bias.detach().view(det.na, -1)
        delta = after - before[k]
        torch.testing.assert_close(delta[:, 4], torch.full((3,), math.log(8 / (640 / s) ** 2)))
        torch.testing.assert_close(delta[:, 5:], torch.full((3, nc), math.log(0.6 / (nc - 0.99999))))
        torch.testing.assert_close(delta[:, :4], torch.zeros(3, 4))
        # default Conv2d bias is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) around the prior
        bound = 1 / math.sqrt(conv.in_channels)
        obj = before[k][:, 4]
        assert ((obj - math.log(8 / (640 / s) ** 2)).abs() <= bound).all()
    assert abs(math.log(8 / 80**2) - (-6.6846)) < 1e-3
    # stride-8 objectness bias mean is the prior plus a small default offset
    obj8 = before[0][:, 4].mean().item()
    assert abs(obj8 - math.log(8 / 80**2)) < 1 / math.sqrt(det.m[0].in_channels)


def test_anchors_buffer_grid_units_and_state_dict():
    model = DetectionModel(model_cfg("yolov5n"), nc=3)
    det = model.detect
    torch.testing.assert_close(det.anchors * det.stride.view(-1, 1, 1), DEFAULT_ANCHORS_PX)
    sd = model.state_dict()
    assert "model.24.anchors" in sd
    assert not any("stride" in k for k in sd)

    other = DetectionModel(model_cfg("yolov5n"), nc=3)
    sd["model.24.anchors"] = sd["model.24.anchors"] * 1.5  # e.g. AutoAnchor output
    other.load_state_dict(sd)
    torch.testing.assert_close(other.detect.anchors, det.anchors * 1.5)
    clone = copy.deepcopy(model)  # EMA-style copy keeps anchors and strides
    torch.testing.assert_close(clone.detect.anchors, det.anchors)
    assert clone.stride.tolist() == [8.0, 16.0, 32.0]


@pytest.mark.parametrize("hyp_anchors", [3, 3.2])
def test_hyp_anchors_give_placeholders(hyp_anchors):
    model = DetectionModel(model_cfg("yolov5n"), nc=3, anchors=hyp_anchors)
    det = model.detect
    assert det.anchors.shape == (3, 3, 2)
    pixels = det.anchors * det.stride.view(-1, 1, 1)
    torch.testing.assert_close(pixels, torch.arange(6.0).view(1, 3, 2).expand(3, 3, 2))


def test_hyp_anchors_count_changes_head():
    model = DetectionModel(model_cfg("yolov5n"), nc=3, anchors=2)
    assert model.detect.na == 2
    assert model.detect.m[0].out_channels == 2 * 8
    assert model(torch.rand(1, 3, 64, 64))[0].shape == (1, 2, 8, 8, 8)


def test_check_anchor_order_flips_reversed():
    det = Detect(nc=2, anchors=DEFAULT_ANCHORS_PX.flip(0).tolist(), ch=[8, 16, 32])
    det.stride = torch.tensor([8.0, 16.0, 32.0])
    assert check_anchor_order(det)
    torch.testing.assert_close(det.anchors, DEFAULT_ANCHORS_PX)
    assert not check_anchor_order(det)  # already in order: untouched
    torch.testing.assert_close(det.anchors, DEFAULT_ANCHORS_PX)


def test_model_with_reversed_anchors_is_reordered():
    cfg = dict(model_cfg("yolov5n"))
    cfg["anchors"] = DEFAULT_ANCHORS_PX.flip(0).tolist()
    model = DetectionModel(cfg, nc=3)
    torch.testing.assert_close(model.detect.anchors * model.stride.view(-1, 1, 1), DEFAULT_ANCHORS_PX)


def test_flat_anchor_lists_accepted():
    cfg = dict(model_cfg("yolov5n"))
    cfg["anchors"] = DEFAULT_ANCHORS_PX.view(3, 6).tolist()
    model = DetectionModel(cfg, nc=3)
    torch.testing.assert_close(model.detect.anchors * model.stride.view(-1, 1, 1), DEFAULT_ANCHORS_PX)


def test_bad_config_messages():
    cfg = dict(model_cfg("yolov5n"))
    bad = dict(cfg, head=[*cfg["head"][:-1], [[17, 20, 23], 1, "Detekt", ["nc", "anchors"]]])
    with pytest.raises(ValueError, match="unknown module 'Detekt'"):
        DetectionModel(bad, nc=3)
    missing = {k: v for k, v in cfg.items() if k != "head"}
    with pytest.raises(KeyError, match="head"):
        DetectionModel(missing, nc=3)


def test_autocast_forward():
    model = DetectionModel(model_cfg("yolov5n"), nc=3)
    x = torch.rand(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model(x)
        model.eval()
        decoded, _ = model(x)
    assert raw[0].dtype == torch.bfloat16
    assert decoded.dtype == torch.float32 and torch.isfinite(decoded).all()
