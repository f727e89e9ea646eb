"""Parse a model config's layer list (``[from, repeats, module, args]``) into modules, depth/width scaled."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from detector.models.blocks import C3, SPPF, Bottleneck, Concat, Conv
from detector.models.detect import Detect

# Modules a layer list may name. Channel-scaled ones take (c_in, c_out, *args); C3 also gets the repeat count.
MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPPF": SPPF,
    "Concat": Concat,
    "Upsample": nn.Upsample,
    "Detect": Detect,
}
CHANNEL_SCALED = (Conv, Bottleneck, C3, SPPF)
REPEATS_AS_ARG = (C3,)


@dataclass
class BuiltLayers:
    """The parsed network: ``layers[i]`` reads from ``routes[i]`` (-1 = previous layer, or a list of indices).

    Outputs of the layers in ``save`` are kept for later routing; ``out_channels[i]`` is layer i's channels.
    """

    layers: nn.Sequential
    routes: list[int | list[int]]
    save: list[int]
    out_channels: list[int]


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of ``divisor`` that is >= x."""
    return math.ceil(x / divisor) * divisor


def to_plain(obj: Any) -> Any:
    """Recursively convert Mappings/Sequences (e.g. OmegaConf containers) to dicts and lists."""
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [to_plain(v) for v in obj]
    return obj


def scaled_repeats(n: int, depth_multiple: float) -> int:
    """YOLOv5 depth scaling: ``max(round(n * gd), 1)`` for n > 1, else n."""
    return max(round(n * depth_multiple), 1) if n > 1 else n


def _input_channels(route: int | list[int], out_channels: list[int], ch_in: int) -> list[int]:
    refs = [route] if isinstance(route, int) else list(route)
    chans = []
    for r in refs:
        if r == -1:
            chans.append(out_channels[-1] if out_channels else ch_in)
        else:
            chans.append(out_channels[r])
    return chans


def build_layers(cfg: Mapping, nc: int, ch: int = 3) -> BuiltLayers:
    """Parse ``cfg['backbone'] + cfg['head']`` with ``depth_multiple``/``width_multiple`` scaling.

    A Detect layer gets ``nc``, ``cfg['anchors']`` (per-level lists, or an int = anchors per layer, which
    gives the placeholder anchors ``[0, 1, ..., 2 * na - 1]`` on every level) and the channels of its inputs.
    """
    for key in ("depth_multiple", "width_multiple", "anchors", "backbone", "head"):
        if key not in cfg:
            raise KeyError(f"model config is missing '{key}' (keys: {sorted(cfg)})")
    gd, gw = float(cfg["depth_multiple"]), float(cfg["width_multiple"])
    anchors = cfg["anchors"]
    layers: list[nn.Module] = []
    routes: list[int | list[int]] = []
    save: set[int] = set()
    out_channels: list[int] = []
    for i, spec in enumerate(list(cfg["backbone"]) + list(cfg["head"])):
        if len(spec) != 4:
            raise ValueError(f"layer {i}: expected [from, repeats, module, args], got {spec}")
        route, n, name, args = spec
        if name not in MODULES:
            raise ValueError(f"layer {i}: unknown module '{name}' (known: {sorted(MODULES)})")
        module_cls = MODULES[name]
        args = list(args)
        n = scaled_repeats(int(n), gd)
        c_in = _input_channels(route, out_channels, ch)
        if module_cls in CHANNEL_SCALED:
            c2 = make_divisible(args[0] * gw, 8)
            args = [c_in[0], c2, *args[1:]]
            if module_cls in REPEATS_AS_ARG:
                args.insert(2, n)
                n = 1
        elif module_cls is Concat:
            c2 = sum(c_in)
        elif module_cls is Detect:
            level_anchors = [list(range(int(anchors) * 2))] * len(c_in) if isinstance(anchors, int) else anchors
            args = [nc, level_anchors, c_in]
            c2 = 0
        else:
            c2 = c_in[0]
        module = nn.Sequential(*(module_cls(*args) for _ in range(n))) if n > 1 else module_cls(*args)
        layers.append(module)
        routes.append(route)
        refs = [route] if isinstance(route, int) else route
        save.update(r % i for r in refs if r != -1)  # negative refs count back from layer i
        out_channels.append(c2)
    if not isinstance(layers[-1], Detect):
        raise ValueError("the last layer of the model config must be Detect")
    return BuiltLayers(nn.Sequential(*layers), routes, sorted(save), out_channels)
