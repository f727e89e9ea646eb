"""Optimizer construction, epoch LR schedules and YOLOv5's gradual warmup, as pure functions.

Group order everywhere: 0 = biases (no decay), 1 = conv/linear weights (decayed), 2 = norm-layer weights
(no decay). No Lightning here; the warmup callback and the LightningModule call these.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)

OPTIMIZER_CHOICES = ("SGD", "Adam", "AdamW", "auto")

# Every torch.nn class whose name contains "Norm" (BatchNorm*, SyncBatchNorm, LayerNorm, GroupNorm, ...).
_NORM_TYPES = tuple(v for k, v in vars(nn).items() if "Norm" in k and inspect.isclass(v) and issubclass(v, nn.Module))


# --------------------------------------------------------------------------------------------- batch size


def accumulate_for(batch_size: int, nbs: int = 64) -> int:
    """Batches accumulated per optimizer step after warmup: max(round(nbs / batch_size), 1)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return max(round(nbs / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, accumulate: int, nbs: int = 64) -> float:
    """Weight decay scaled to the effective batch: wd * batch_size * accumulate / nbs."""
    return weight_decay * batch_size * accumulate / nbs


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


def auto_iterations(n_images: int, batch_size: int, nbs: int = 64, epochs: int = 300) -> int:
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


# --------------------------------------------------------------------------------------------- LR schedules


class LinearLambda:
    """Linear LR factor: lf(x) = (1 - x/epochs) * (1 - lrf) + lrf (1 at x=0, lrf at x=epochs)."""

    def __init__(self, epochs: int, lrf: float) -> None:
        self.epochs = epochs
        self.lrf = lrf

    def __call__(self, x: float) -> float:
        return (1 - x / self.epochs) * (1.0 - self.lrf) + self.lrf

    def __repr__(self) -> str:
        return f"LinearLambda(epochs={self.epochs}, lrf={self.lrf})"


class CosineLambda:
    """Half-cosine LR factor: lf(x) = ((1 - cos(pi*x/epochs)) / 2) * (lrf - 1) + 1, from 1 down to lrf."""

    def __init__(self, epochs: int, lrf: float) -> None:
        self.epochs = epochs
        self.lrf = lrf

    def __call__(self, x: float) -> float:
        return ((1 - math.cos(x * math.pi / self.epochs)) / 2) * (self.lrf - 1) + 1

    def __repr__(self) -> str:
        return f"CosineLambda(epochs={self.epochs}, lrf={self.lrf})"


def lr_lambda(epochs: int, lrf: float, cos: bool = False) -> LinearLambda | CosineLambda:
    """The epoch LR factor: cosine when ``cos`` else linear."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return CosineLambda(epochs, lrf) if cos else LinearLambda(epochs, lrf)


def build_scheduler(optimizer: torch.optim.Optimizer, lf: Callable[[int], float]) -> LambdaLR:
    """LambdaLR stepped once per epoch, with YOLOv5's one-epoch lag.

    The constructor sets lr0*lf(0); last_epoch is then reset to -1 so the step at the end of epoch 0 gives
    lf(0) again and epoch k >= 1 trains at lr0*lf(k-1) (outside warmup).
    """
    scheduler = LambdaLR(optimizer, lr_lambda=lf)
    scheduler.last_epoch = -1
    return scheduler


# --------------------------------------------------------------------------------------------- warmup


def warmup_iters(warmup_epochs: float, nb: int, min_iters: int = 100) -> int:
    """Warmup length in iterations: max(round(warmup_epochs * nb), min_iters)."""
    return max(round(warmup_epochs * nb), min_iters)


@dataclass(frozen=True)
class WarmupState:
    """LR per param group, momentum and accumulation for one warmup iteration."""

    lrs: tuple[float, ...]
    momentum: float
    accumulate: int


def warmup_momentum_at(ni: int, nw: int, warmup_momentum: float, momentum: float) -> float:
    """Momentum at warmup iteration ni: linear from warmup_momentum (ni=0) to momentum (ni=nw)."""
    return float(np.interp(ni, [0, nw], [warmup_momentum, momentum]))


def warmup_accumulate(ni: int, nw: int, nbs: int, batch_size: int) -> int:
    """Accumulation at warmup iteration ni: max(1, round(interp(ni, [0, nw], [1, nbs / batch_size])))."""
    return max(1, round(float(np.interp(ni, [0, nw], [1, nbs / batch_size]))))


def warmup_state(
    ni: int,
    nw: int,
    epoch: int,
    lf: Callable[[int], float],
    initial_lrs: Sequence[float],
    warmup_bias_lr: float,
    warmup_momentum: float,
    momentum: float,
    nbs: int,
    batch_size: int,
) -> WarmupState:
    """YOLOv5 warmup at global iteration ni <= nw of ``epoch``.

    Group 0 (biases) falls from warmup_bias_lr, the others rise from 0, all to initial_lr * lf(epoch).
    """
    if ni > nw:
        raise ValueError(f"warmup_state is only defined for ni <= nw, got ni={ni}, nw={nw}")
    factor = lf(epoch)
    lrs = tuple(
        float(np.interp(ni, [0, nw], [warmup_bias_lr if j == 0 else 0.0, lr0 * factor]))
        for j, lr0 in enumerate(initial_lrs)
    )
    return WarmupState(
        lrs=lrs,
        momentum=warmup_momentum_at(ni, nw, warmup_momentum, momentum),
        accumulate=warmup_accumulate(ni, nw, nbs, batch_size),
    )


@dataclass(frozen=True)
class PlannedSchedule:
    """Per-iteration plan for a whole run: lr (n, groups), momentum (n,), accumulate (n,), n = epochs * nb."""

    lr: np.ndarray
    momentum: np.ndarray
    accumulate: np.ndarray
    nb: int
    nw: int
    epochs: int


def planned_schedule(
    nb: int,
    epochs: int,
    initial_lr: float | Sequence[float],
    lf: Callable[[int], float],
    warmup_epochs: float = 3.0,
    warmup_bias_lr: float = 0.1,
    warmup_momentum: float = 0.8,
    momentum: float = 0.937,
    batch_size: int = 16,
    nbs: int = 64,
    min_iters: int = 100,
    n_groups: int = 3,
) -> PlannedSchedule:
    """LR, momentum and accumulation at every iteration of a run, as YOLOv5 trains it.

    Warmup (ni <= nw) follows :func:`warmup_state`; the rest of the epoch in which warmup ends keeps the
    warmup's end value; every later epoch k trains at initial_lr * lf(k - 1) (the one-epoch lag).
    """
    if nb < 1 or epochs < 1:
        raise ValueError(f"nb and epochs must be >= 1, got nb={nb}, epochs={epochs}")
    lrs0 = [float(initial_lr)] * n_groups if np.isscalar(initial_lr) else [float(v) for v in initial_lr]
    n = epochs * nb
    nw = warmup_iters(warmup_epochs, nb, min_iters)
    lr = np.empty((n, len(lrs0)))
    mom = np.empty(n)
    acc = np.empty(n, dtype=np.int64)
    last = None
    for ni in range(min(nw + 1, n)):
        last = warmup_state(ni, nw, ni // nb, lf, lrs0, warmup_bias_lr, warmup_momentum, momentum, nbs, batch_size)
        lr[ni], mom[ni], acc[ni] = last.lrs, last.momentum, last.accumulate
    if nw + 1 < n:
        # After warmup the values warmup left stay until the epoch ends, then the scheduler's lagged value.
        end_epoch = nw // nb
        lr[nw + 1 : (end_epoch + 1) * nb] = last.lrs
        for epoch in range(end_epoch + 1, epochs):
            factor = lf(epoch - 1)
            lr[epoch * nb : (epoch + 1) * nb] = [v * factor for v in lrs0]
        mom[nw + 1 :] = last.momentum
        acc[nw + 1 :] = last.accumulate
    return PlannedSchedule(lr=lr, momentum=mom, accumulate=acc, nb=nb, nw=nw, epochs=epochs)


def count_optimizer_steps(nb: int, epochs: int, batch_size: int, nbs: int, nw: int) -> int:
    """Optimizer steps of a run under YOLOv5's rule: step when ni - last_opt_step >= accumulate.

    last_opt_step starts at -1 and persists across epochs; accumulate follows the warmup ramp while
    ni <= nw and keeps its last warmup value afterwards.
    """
    last_opt_step, steps = -1, 0
    accumulate = accumulate_for(batch_size, nbs)
    for ni in range(nb * epochs):
        if ni <= nw:
            accumulate = warmup_accumulate(ni, nw, nbs, batch_size)
        if ni - last_opt_step >= accumulate:
            steps += 1
            last_opt_step = ni
    return steps
