"""Optuna over evolution's search space (hydra/sweeper=optuna_evolve): the params, and a shared, continued study."""

from __future__ import annotations

import json

import pytest
import yaml

from detector.evolve.optuna_space import optuna_params
from detector.evolve.space import SearchSpace
from tests.test_evolve_sweep import tiny_data, train_m  # noqa: F401 (fixture)


def test_params_cover_the_evolved_keys_with_their_limits():
    space = SearchSpace.load("yolov5")
    params = optuna_params("yolov5")
    evolved = [k for k, g in zip(space.keys, space.gains, strict=True) if g > 0]
    assert list(params) == [f"hyp.{k}" for k in evolved]  # gain-0 keys stay at the hyp's value
    assert params["hyp.anchors"] == "int(interval(2, 10))"
    assert params["hyp.lr0"] == "tag(log, interval(1e-05, 0.1))"  # 1e-5..1e-1: log scale
    assert params["hyp.momentum"] == "interval(0.6, 0.98)"


@pytest.mark.slow  # two sweeps, about 90 s
def test_a_shared_study_is_continued_by_a_second_sweep(tiny_data, tmp_path):  # noqa: F811
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = SearchSpace.load("yolov5")
    for run in range(2):
        sweep = tmp_path / f"sweep{run}"
        shared = [f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=shared", f"hydra.sweep.dir={sweep}"]
        train_m(tmp_path, tiny_data, "hydra/sweeper=optuna_evolve", "hydra.sweeper.n_trials=1", *shared)
        hyp = yaml.safe_load((sweep / "0" / "config.yaml").read_text())["hyp"]
        for key, gain, lo, hi in zip(space.keys, space.gains, space.lower, space.upper, strict=True):
            if gain > 0:
                assert lo <= hyp[key] <= hi, key
        result = json.loads((sweep / "0" / "results.json").read_text())
        best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
        assert best["best_value"] >= result["fitness"]
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert study.trials[0].params != study.trials[1].params
