"""DetectionModel: the YOLOv5 network built from a model config, with strides, anchors and bias priors."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from detector.models.builder import build_layers, to_plain
from detector.models.detect import Detect, check_anchor_order

logger = logging.getLogger(__name__)

STRIDE_PROBE_SIZE = 256  # side of the zero image whose forward pass gives the strides


class DetectionModel(nn.Module):
    """YOLOv5 detector from a ``conf/model/*.yaml`` mapping.

    ``anchors`` is ``hyp['anchors']``: when truthy it is rounded to an anchors-per-level count and every level
    gets the placeholder anchors ``[0, 1, ..., 2 * na - 1]`` (AutoAnchor is then expected to replace them).
    Train mode ``forward`` returns the raw list of ``(bs, na, ny, nx, no)``; eval mode returns
    ``(decoded (bs, N, no) pixels with sigmoid conf, raw list)``.
    """

    def __init__(self, cfg: Mapping, nc: int, anchors: float | None = None, ch: int = 3):
        super().__init__()
        if nc < 1:
            raise ValueError(f"nc must be >= 1, got {nc}")
        self.cfg = to_plain(cfg)
        if anchors:
            logger.info("Overriding model anchors with hyp anchors=%s per level (placeholders)", round(anchors))
            self.cfg["anchors"] = round(anchors)
        self.nc = nc
        self.placeholder_anchors = bool(anchors)  # AutoAnchor must replace them (it reads this, not the hyp)
        built = build_layers(self.cfg, nc, ch)
        self.model = built.layers  # named "model" so state dict keys read model.<i>.<...> as in YOLOv5
        self.routes = built.routes
        self.save = set(built.save)

        detect = self.detect
        detect.stride = self._probe_strides(ch).to(detect.stride)
        check_anchor_order(detect)  # in pixels, before the division below
        detect.anchors /= detect.stride.view(-1, 1, 1)  # grid units from here on
        detect.initialize_biases()
        logger.info(
            "%s: %d layers, %d parameters, strides %s",
            self.cfg.get("name", "model"),
            len(self.model),
            sum(p.numel() for p in self.parameters()),
            detect.stride.tolist(),
        )

    def freeze(self, layers: Iterable[int]) -> int:
        """Stop the gradients of these layers' parameters (YOLOv5's ``--freeze``); returns the tensors frozen."""
        prefixes = tuple(f"model.{i}." for i in layers)
        frozen = 0
        for name, p in self.named_parameters():
            p.requires_grad = not name.startswith(prefixes)
            frozen += not p.requires_grad
        return frozen

    @property
    def detect(self) -> Detect:
        """The Detect head (the last layer)."""
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        """Output strides, one per detection level, e.g. ``tensor([8., 16., 32.])``."""
        return self.detect.stride

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run every layer but Detect; return the Detect inputs."""
        outputs: list[torch.Tensor | None] = []
        for i, (layer, route) in enumerate(zip(self.model[:-1], self.routes[:-1], strict=True)):
            if route != -1:
                x = outputs[route] if isinstance(route, int) else [x if r == -1 else outputs[r] for r in route]
            x = layer(x)
            outputs.append(x if i in self.save else None)
        route = self.routes[-1]
        refs = [route] if isinstance(route, int) else route
        return [x if r == -1 else outputs[r] for r in refs]

    @torch.no_grad()
    def _probe_strides(self, ch: int) -> torch.Tensor:
        """Strides from a forward pass on a zero image, in eval mode so BatchNorm statistics are unchanged."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            feats = self._features(torch.zeros(1, ch, STRIDE_PROBE_SIZE, STRIDE_PROBE_SIZE, device=device))
        finally:
            self.train(was_training)
        return torch.tensor([STRIDE_PROBE_SIZE / f.shape[-2] for f in feats], dtype=torch.float32)

    def forward(self, x: torch.Tensor):
        return self.detect(self._features(x))
