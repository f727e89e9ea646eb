"""YOLOv5's one-line model summary at fit start: layers, parameters, gradients and GFLOPs at the training size."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import summarize
from torch import nn

log = logging.getLogger(__name__)


def summary_line(name: str, model: nn.Module, flops: int, imgsz: int) -> str:
    """``<name> summary: N layers, P parameters, G gradients, F GFLOPs at S px``. Layers are counted as YOLOv5
    counts them: every module, its Convs' activations once (YOLOv5's Convs share one SiLU, ours have one each)."""
    params = sum(p.numel() for p in model.parameters())
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    modules = list(model.modules())
    activations = {type(m) for m in modules if isinstance(m, nn.SiLU)}
    layers = sum(not isinstance(m, nn.SiLU) for m in modules) + len(activations)
    return (f"{name} summary: {layers} layers, {params} parameters, {grads} gradients, {flops / 1e9:.3g} GFLOPs "
            f"at {imgsz} px")  # fmt: skip


class YoloModelSummary(ModelSummary):
    """A ModelSummary (so Lightning adds no table of its own) that logs YOLOv5's line instead. The FLOPs are
    Lightning's count of one forward pass of ``pl_module.example_input_array`` (one image at the training size)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        flops = int(getattr(summarize(pl_module, max_depth=1), "total_flops", 0))  # every rank, as Lightning's
        if not trainer.is_global_zero:
            return
        name = str(pl_module.model.cfg.get("name", "model"))
        log.info(summary_line(name, pl_module.model, flops, int(pl_module.example_input_array.shape[-1])))
