"""Hyperparameter evolution: YOLOv5's genetic algorithm (genetic), its search space (space), the shared
evolve.csv state (history), one process per trial (trial) and the Hydra sweeper driving any launcher (sweeper)."""
