"""YOLOv5's training schedule: the lr of each param group, momentum and gradient accumulation at every iteration.

:class:`TrainingSchedule` is the one owner of the step rule. It is pure: every value is a function of the global
iteration ``ni``, so a resumed run recomputes it and nothing is saved. The LightningModule applies it before every
batch and steps by it; lr.png and the optimizer step count read the same object.

Group order: 0 = biases, 1 = decayed weights, 2 = norm-layer weights (``detector.optim.split_param_groups``).
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

N_GROUPS = 3


def accumulate_for(batch_size: int, nbs: int) -> int:
    """Batches accumulated per optimizer step after warmup: max(round(nbs / batch_size), 1)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return max(round(nbs / batch_size), 1)


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


@dataclass(frozen=True)
class StepValues:
    """What one iteration trains with: lr per param group, momentum (SGD) or beta1 (Adam), accumulation."""

    lrs: tuple[float, ...]
    momentum: float
    accumulate: int


@dataclass(frozen=True)
class PlannedSchedule:
    """Per-iteration plan for a whole run: lr (n, groups), momentum (n,), accumulate (n,), n = epochs * nb."""

    lr: np.ndarray
    momentum: np.ndarray
    accumulate: np.ndarray
    nb: int
    nw: int
    epochs: int


@dataclass(frozen=True)
class TrainingSchedule:
    """YOLOv5's warmup, epoch LR schedule and accumulation rule for a run of ``epochs`` x ``nb`` batches.

    Warmup (ni <= nw, nw = max(round(warmup_epochs * nb), min_warmup_iters)): group 0 falls from warmup_bias_lr,
    the others rise from 0, all towards lr0 * lf(epoch); momentum rises from warmup_momentum to momentum;
    accumulation from 1 to nbs / batch_size. The rest of the epoch in which warmup ends keeps warmup's last values;
    every later epoch k trains at lr0 * lf(k - 1) (YOLOv5's per-epoch scheduler step, one epoch behind).
    ``lr0``, ``momentum`` and ``warmup_bias_lr`` are the optimizer's (``optimizer=auto`` changes them).
    """

    nb: int
    epochs: int
    batch_size: int
    lr0: float
    momentum: float
    warmup_bias_lr: float
    lrf: float
    warmup_epochs: float
    warmup_momentum: float
    nbs: int
    cos_lr: bool
    min_warmup_iters: int
    ramp_adam_beta1: bool
    lf: LinearLambda | CosineLambda = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("nb", "epochs", "batch_size", "nbs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainingSchedule: {name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "lf", lr_lambda(self.epochs, self.lrf, self.cos_lr))

    @property
    def nw(self) -> int:
        """Last warmup iteration."""
        return max(round(self.warmup_epochs * self.nb), self.min_warmup_iters)

    @property
    def iterations(self) -> int:
        return self.nb * self.epochs

    def at(self, ni: int) -> StepValues:
        """The values iteration ``ni`` (0-based over the whole run) trains with."""
        nw = self.nw
        if ni > nw:
            end = self._warmup_end
            epoch = ni // self.nb
            if epoch == nw // self.nb:
                return end
            factor = self.lf(epoch - 1)
            return StepValues(tuple(self.lr0 * factor for _ in range(N_GROUPS)), end.momentum, end.accumulate)
        xi = [0, nw]
        target = self.lr0 * self.lf(ni // self.nb)
        lrs = tuple(float(np.interp(ni, xi, [self.warmup_bias_lr if j == 0 else 0.0, target])) for j in range(N_GROUPS))
        momentum = float(np.interp(ni, xi, [self.warmup_momentum, self.momentum]))
        accumulate = max(1, round(float(np.interp(ni, xi, [1, self.nbs / self.batch_size]))))
        return StepValues(lrs, momentum, accumulate)

    @cached_property
    def _warmup_end(self) -> StepValues:
        return self.at(self.nw)

    def steps_at(self, ni: int, last_opt_step: int) -> bool:
        """YOLOv5's rule: step the optimizer after batch ``ni`` when ni - last_opt_step >= accumulate."""
        return ni - last_opt_step >= self.at(ni).accumulate

    def apply(self, param_groups: Sequence[MutableMapping], ni: int) -> StepValues:
        """Set lr and momentum (SGD) or beta1 (Adam/AdamW, when ``ramp_adam_beta1``) of every group for ``ni``."""
        values = self.at(ni)
        if len(param_groups) != N_GROUPS:
            raise ValueError(f"TrainingSchedule expects {N_GROUPS} param groups, got {len(param_groups)}")
        for group, lr in zip(param_groups, values.lrs, strict=True):
            group["lr"] = lr
            if "momentum" in group:
                group["momentum"] = values.momentum
            elif "betas" in group and self.ramp_adam_beta1:
                group["betas"] = (values.momentum, *tuple(group["betas"])[1:])
        return values

    def plan(self) -> PlannedSchedule:
        """Every iteration's values, as arrays (lr.png and the tests)."""
        values = [self.at(ni) for ni in range(self.iterations)]
        return PlannedSchedule(
            lr=np.array([v.lrs for v in values], dtype=np.float64).reshape(-1, N_GROUPS),
            momentum=np.array([v.momentum for v in values], dtype=np.float64),
            accumulate=np.array([v.accumulate for v in values], dtype=np.int64),
            nb=self.nb,
            nw=self.nw,
            epochs=self.epochs,
        )

    def optimizer_steps(self) -> int:
        """Optimizer steps of the whole run (last_opt_step starts at -1 and persists across epochs)."""
        last_opt_step, steps = -1, 0
        for ni in range(self.iterations):
            if self.steps_at(ni, last_opt_step):
                steps += 1
                last_opt_step = ni
        return steps
