"""Hydra finds plugins only inside the ``hydra_plugins`` namespace package: this names detector's sweeper there."""

from detector.evolve.sweeper import EvolveSweeperImpl


class EvolveSweeper(EvolveSweeperImpl):
    """``hydra/sweeper=evolve`` (detector.evolve.sweeper)."""
