"""The evolution search space (conf/evolve) as hydra-optuna-sweeper ``params``: ``hydra/sweeper=optuna_evolve``.

Each key with a gain above 0 becomes an Optuna distribution over [lower, upper]; gain-0 keys keep the hyp's value, as
in evolution. ``anchors`` is an integer; a key whose limits span 100x or more (lr0) is searched on a log scale,
where evolution's multiplicative mutation also moves it.
"""

from __future__ import annotations

from pathlib import Path

from detector.evolve.space import SearchSpace

RESOLVER = "detector.optuna_space"  # ${detector.optuna_space:yolov5} in conf/hydra/sweeper/optuna_evolve.yaml
LOG_SPAN = 100.0  # upper / lower ratio from which a key is searched on a log scale


def optuna_params(space: str | Path) -> dict[str, str]:
    """``hyp.<key>`` -> Hydra's sweep syntax (``interval``, ``tag(log, ...)``, ``int(...)``) for every evolved key."""
    table = SearchSpace.load(space)
    params = {}
    for key, gain, lo, hi in zip(table.keys, table.gains, table.lower, table.upper, strict=True):
        if gain == 0:
            continue
        if key == "anchors":
            params[f"hyp.{key}"] = f"int(interval({int(lo)}, {int(hi)}))"
        elif lo > 0 and hi / lo >= LOG_SPAN:
            params[f"hyp.{key}"] = f"tag(log, interval({float(lo)!r}, {float(hi)!r}))"
        else:
            params[f"hyp.{key}"] = f"interval({float(lo)!r}, {float(hi)!r})"
    return params


def register_resolver() -> None:
    """Make ``${detector.optuna_space:NAME_OR_PATH}`` available to configs (idempotent)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(RESOLVER, lambda space: optuna_params(str(space)), replace=True)
