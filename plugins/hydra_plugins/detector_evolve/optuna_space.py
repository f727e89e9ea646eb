"""Hydra imports every module of ``hydra_plugins`` before it builds the sweeper: this registers the resolver that
turns detector's search space into hydra-optuna-sweeper params (``hydra/sweeper=optuna_evolve``)."""

from detector.evolve.optuna_space import register_resolver

register_resolver()
