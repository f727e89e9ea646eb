"""YOLOv5 7.0's genetic step as pure functions: fitness, parent selection, mutation, limits.

Own code from the published algorithm (reference §6): a parent from the top results by fitness, every gene
multiplied by ``1 + gain * Bernoulli(p) * N(0, 1) * u * sigma`` (u one uniform draw per child), the factors
clipped and redrawn until at least one changes, then clipped to the limits and rounded to 5 decimals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.evolve.space import SearchSpace


@dataclass(frozen=True)
class GeneticSettings:
    """The sweeper's algorithm settings (conf/hydra/sweeper/evolve.yaml; no defaults here)."""

    parent: str  # single: fitness-weighted random pick among the top; weighted: fitness-weighted average
    top_n: int  # parents come from this many best rows
    mutation_prob: float  # probability that a gene mutates
    sigma: float  # mutation scale
    factor_min: float  # per-gene factor limits
    factor_max: float
    fitness_weights: tuple[float, float, float, float]  # over (P, R, mAP@0.5, mAP@0.5:0.95)

    def __post_init__(self) -> None:
        if self.parent not in ("single", "weighted"):
            raise ValueError(f"parent={self.parent!r}: choose single or weighted")
        if self.top_n < 1 or not 0 < self.mutation_prob <= 1 or self.sigma <= 0:
            raise ValueError("top_n must be >= 1, mutation_prob in (0, 1] and sigma > 0")
        if len(self.fitness_weights) != 4:
            raise ValueError("fitness_weights has 4 entries: P, R, mAP@0.5, mAP@0.5:0.95")


def fitness(results: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of the first 4 result columns (P, R, mAP@0.5, mAP@0.5:0.95) per row."""
    return np.asarray(results, float)[..., :4] @ np.asarray(weights, float)


def select_parent(
    genes: np.ndarray, fit: np.ndarray, settings: GeneticSettings, rng: np.random.Generator
) -> tuple[np.ndarray, list[int]]:
    """The parent gene vector from the ``top_n`` rows by fitness, and the row indices it came from."""
    order = np.argsort(-fit, kind="stable")[: min(settings.top_n, len(fit))]
    w = fit[order] - fit[order].min() + 1e-6
    if settings.parent == "single" or len(order) == 1:
        pick = int(rng.choice(len(order), p=w / w.sum()))
        return genes[order[pick]].copy(), [int(order[pick])]
    return (genes[order] * w[:, None]).sum(0) / w.sum(), [int(i) for i in order]


def mutation_factors(gains: np.ndarray, settings: GeneticSettings, rng: np.random.Generator) -> np.ndarray:
    """Per-gene factors ``1 + gain * Bernoulli(p) * N(0, 1) * u * sigma`` clipped to the factor limits, redrawn
    until one differs from 1 (all ones is impossible when every gain is 0: then ones are returned)."""
    if not (gains > 0).any():
        return np.ones_like(gains)
    while True:
        u = rng.random()
        v = gains * (rng.random(len(gains)) < settings.mutation_prob) * rng.standard_normal(len(gains))
        v = (v * u * settings.sigma + 1).clip(settings.factor_min, settings.factor_max)
        if (v != 1).any():
            return v


def constrain(values: np.ndarray, space: SearchSpace) -> np.ndarray:
    """Clip to the limits and round to 5 decimals (YOLOv5's ``round(x, 5)``, decimals not digits)."""
    return np.round(np.clip(values, space.lower, space.upper), 5)


def child(
    genes: np.ndarray | None, fit: np.ndarray | None, base: np.ndarray, space: SearchSpace,
    settings: GeneticSettings, rng: np.random.Generator,
) -> tuple[np.ndarray, list[int]]:  # fmt: skip
    """A new child's gene vector (space order) and its parent rows: the base unmutated when there is no history,
    else a mutated parent, constrained."""
    if genes is None or fit is None or len(genes) == 0:
        return constrain(base, space), []
    parent, rows = select_parent(genes, fit, settings, rng)
    return constrain(parent * mutation_factors(space.gains, settings, rng), space), rows
