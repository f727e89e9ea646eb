"""The YOLOv5 Detect head (anchor-based, one 1x1 conv per level), its bias prior and anchor-order check."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)


def anchors_tensor(anchors: Sequence) -> torch.Tensor:
    """Per-level anchors, flat ``[w, h, w, h, ...]`` or ``[[w, h], ...]`` pairs -> tensor ``(nl, na, 2)``."""
    levels = [torch.as_tensor(level, dtype=torch.float32).reshape(-1, 2) for level in anchors]
    if len({lv.shape[0] for lv in levels}) != 1:
        raise ValueError(f"every level needs the same number of anchors, got {[lv.shape[0] for lv in levels]}")
    return torch.stack(levels)


class Detect(nn.Module):
    """Per level: ``Conv2d(ch_i, na * (5 + nc), 1)`` reshaped to ``(bs, na, ny, nx, 5 + nc)``.

    Buffers: ``anchors`` ``(nl, na, 2)`` (persistent; pixels until the model divides them by ``stride``, then
    grid units) and ``stride`` ``(nl,)`` (not persistent; set by the model from a dry run).
    Training mode returns the raw list; eval mode returns ``(decoded (bs, N, no) in pixels, raw list)``.
    """

    def __init__(self, nc: int, anchors: Sequence, ch: Sequence[int]):
        super().__init__()
        anchor_t = anchors_tensor(anchors)
        self.nc = nc
        self.no = nc + 5
        self.nl, self.na = anchor_t.shape[:2]
        if len(ch) != self.nl:
            raise ValueError(f"Detect got {len(ch)} input layers for {self.nl} anchor levels")
        self.register_buffer("anchors", anchor_t)
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self._grids: list[torch.Tensor | None] = [None] * self.nl

    def forward_raw(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Apply the per-level convs: list of ``(bs, na, ny, nx, no)`` raw logits."""
        out = []
        for conv, x in zip(self.m, xs, strict=True):
            y = conv(x)
            bs, _, ny, nx = y.shape
            out.append(y.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return out

    def forward(self, xs: Sequence[torch.Tensor]):
        raw = self.forward_raw(xs)
        if self.training:
            return raw
        return self.decode(raw), raw

    def _grid(self, i: int, ny: int, nx: int, device: torch.device) -> torch.Tensor:
        """Cell corner offsets ``(1, 1, ny, nx, 2)`` as ``(x - 0.5, y - 0.5)``, cached per level; built afresh
        while tracing (export), so that the traced graph computes them from the input's size."""
        grid = self._grids[i]
        stale = grid is None or grid.shape[2:4] != (ny, nx) or grid.device != device
        if stale or torch.jit.is_tracing() or (grid.is_inference() and not torch.is_inference_mode_enabled()):
            ys = torch.arange(ny, device=device, dtype=torch.float32)
            xs = torch.arange(nx, device=device, dtype=torch.float32)
            yv, xv = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
            self._grids[i] = grid
        return grid

    def decode(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw logits -> float32 ``(bs, N, no)``: pixel xywh, then sigmoid objectness and class scores."""
        out = []
        for i, r in enumerate(raw):
            bs, _, ny, nx, _ = r.shape
            y = r.float().sigmoid()  # float32 keeps pixel coordinates exact under AMP / half models
            stride = self.stride[i].float()
            anchor_px = (self.anchors[i].float() * stride).view(1, self.na, 1, 1, 2)
            xy = (y[..., :2] * 2 + self._grid(i, ny, nx, r.device)) * stride
            wh = (y[..., 2:4] * 2) ** 2 * anchor_px
            out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no))
        return torch.cat(out, 1)

    @torch.no_grad()
    def initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """Add the YOLOv5 priors to the conv biases.

        Objectness ``log(8 / (640 / s)^2)`` (8 objects per 640^2 image); classes
        ``log(0.6 / (nc - 0.99999))``, or ``log(cf / cf.sum())`` given class frequencies ``cf``.
        """
        for conv, s in zip(self.m, self.stride.tolist(), strict=True):
            if s <= 0:
                raise RuntimeError("Detect.stride must be set before initialize_biases")
            b = conv.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            if cf is None:
                b[:, 5 : 5 + self.nc] += math.log(0.6 / (self.nc - 0.99999))
            else:
                b[:, 5 : 5 + self.nc] += torch.log(cf / cf.sum()).to(b)


@torch.no_grad()
def check_anchor_order(detect: Detect) -> bool:
    """Flip ``detect.anchors`` along the level axis if their mean area runs against the stride order.

    Must run while the anchors are in pixels. Returns True when it flipped them.
    """
    area = detect.anchors.prod(-1).mean(-1).view(-1)
    da = area[-1] - area[0]
    ds = detect.stride[-1] - detect.stride[0]
    if da != 0 and da.sign() != ds.sign():
        logger.info("AutoAnchor: Reversing anchor order")
        detect.anchors[:] = detect.anchors.flip(0)
        return True
    return False
