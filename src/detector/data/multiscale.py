"""YOLOv5 ``--multi-scale``: resize a batch to a random size in [0.5, 1.5] x imgsz (a stride multiple).

The LightningModule calls ``multi_scale`` on each training batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_size(imgsz: int, gs: int, generator: torch.Generator | np.random.Generator | None = None) -> int:
    """A size drawn uniformly from [int(0.5 imgsz), int(1.5 imgsz) + gs) and floored to a multiple of gs."""
    lo, hi = int(0.5 * imgsz), int(1.5 * imgsz) + gs
    if isinstance(generator, np.random.Generator):
        sz = int(generator.integers(lo, hi))
    else:
        sz = int(torch.randint(lo, hi, (1,), generator=generator).item())
    return sz // gs * gs


def multi_scale(
    imgs: torch.Tensor, imgsz: int, gs: int, generator: torch.Generator | np.random.Generator | None = None
) -> torch.Tensor:
    """Resize a (B, C, H, W) batch so its long side becomes a random multi-scale size (bilinear, as YOLOv5).

    Each side becomes ceil(side * sf / gs) * gs with sf = size / max(H, W). Targets are normalised, so they do
    not change. A uint8 batch is resized in float and rounded back to uint8.
    """
    sf = random_size(imgsz, gs, generator) / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    size = [math.ceil(x * sf / gs) * gs for x in imgs.shape[2:]]
    if imgs.is_floating_point():
        return F.interpolate(imgs, size=size, mode="bilinear", align_corners=False)
    out = F.interpolate(imgs.float(), size=size, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(imgs.dtype)
