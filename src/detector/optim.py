"""Optimizer construction: YOLOv5's three parameter groups, weight decay scaling and the ``auto`` choice.

Group order everywhere: 0 = biases (no decay), 1 = conv/linear weights (decayed), 2 = norm-layer weights
(no decay). The lr and momentum of every iteration come from ``detector.schedule.TrainingSchedule``.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from detector.schedule import accumulate_for

log = logging.getLogger(__name__)

OPTIMIZER_CHOICES = ("SGD", "Adam", "AdamW", "auto")

# Every torch.nn class whose name contains "Norm" (BatchNorm*, SyncBatchNorm, LayerNorm, GroupNorm, ...).
_NORM_TYPES = tuple(v for k, v in vars(nn).items() if "Norm" in k and inspect.isclass(v) and issubclass(v, nn.Module))


# --------------------------------------------------------------------------------------------- batch size


def scaled_weight_decay(weight_decay: float, batch_size: int, nbs: int) -> float:
    """Weight decay scaled to the effective batch: wd * batch_size * accumulate / nbs (accumulate after warmup)."""
    return weight_decay * batch_size * accumulate_for(batch_size, nbs) / nbs


# --------------------------------------------------------------------------------------------- optimizer


def split_param_groups(
    model: nn.Module,
) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters into (biases, decayed weights, norm-layer weights), walking modules in order."""
    biases, decayed, norm = [], [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # a shared parameter may sit in only one group
                continue
            seen.add(id(p))
            if name == "bias":
                biases.append(p)
            elif name == "weight" and isinstance(module, _NORM_TYPES):
                norm.append(p)
            else:
                decayed.append(p)
    return biases, decayed, norm


def build_optimizer(
    model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937, decay: float = 5e-4
) -> torch.optim.Optimizer:
    """Optimizer with groups 0 = biases, 1 = decayed weights (weight_decay=decay), 2 = norm weights.

    SGD is Nesterov with ``momentum`` (plain SGD when momentum is 0); Adam/AdamW use betas (momentum, 0.999).
    Each group records ``initial_momentum`` (the momentum/beta1 the warmup ramps to).
    """
    biases, decayed, norm = split_param_groups(model)
    groups = [
        {"params": biases, "weight_decay": 0.0},
        {"params": decayed, "weight_decay": decay},
        {"params": norm, "weight_decay": 0.0},
    ]
    key = _canonical_name(name, allow_auto=False)
    if key == "SGD":
        # torch refuses Nesterov without momentum; momentum=0 means plain SGD.
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    elif key == "Adam":
        optimizer = torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999))
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    for group in optimizer.param_groups:
        group["initial_momentum"] = momentum
    log.info(
        "%s(lr=%s) with parameter groups %d weight(decay=0.0), %d weight(decay=%s), %d bias",
        key,
        lr,
        len(norm),
        len(decayed),
        decay,
        len(biases),
    )
    return optimizer


@dataclass(frozen=True)
class OptimizerChoice:
    """The optimizer actually used, after resolving ``auto``."""

    name: str
    lr: float
    momentum: float
    warmup_bias_lr: float


def auto_iterations(n_images: int, batch_size: int, nbs: int, epochs: int) -> int:
    """Iteration count used by the ``auto`` rule: ceil(n_images / max(batch_size, nbs)) * epochs."""
    return math.ceil(n_images / max(batch_size, nbs)) * epochs


def resolve_optimizer(
    name: str,
    lr0: float,
    momentum: float,
    warmup_bias_lr: float,
    nc: int,
    iterations: int,
    auto_max_iterations: int = 10000,
) -> OptimizerChoice:
    """Resolve ``auto`` (Ultralytics' rule): AdamW with lr round(0.002*5/(4+nc), 6), momentum 0.9 for runs of
    at most ``auto_max_iterations`` iterations, else SGD lr 0.01 momentum 0.9; ``auto`` also sets
    warmup_bias_lr to 0.0. Other names pass through unchanged."""
    key = _canonical_name(name, allow_auto=True)
    if key != "auto":
        return OptimizerChoice(key, lr0, momentum, warmup_bias_lr)
    if iterations > auto_max_iterations:
        choice = OptimizerChoice("SGD", 0.01, 0.9, 0.0)
    else:
        choice = OptimizerChoice("AdamW", round(0.002 * 5 / (4 + nc), 6), 0.9, 0.0)
    log.info(
        "optimizer=auto: %d iterations, nc=%d -> %s(lr=%s, momentum=%s), warmup_bias_lr=0.0 "
        "(lr0 and momentum from the hyp are ignored)",
        iterations,
        nc,
        choice.name,
        choice.lr,
        choice.momentum,
    )
    return choice


def _canonical_name(name: str, allow_auto: bool) -> str:
    choices = OPTIMIZER_CHOICES if allow_auto else OPTIMIZER_CHOICES[:-1]
    for choice in choices:
        if str(name).lower() == choice.lower():
            return choice
    hint = "" if allow_auto or str(name).lower() != "auto" else " (resolve 'auto' with resolve_optimizer first)"
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(choices)}{hint}")
