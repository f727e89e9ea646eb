"""The evolution's pure parts against YOLOv5 7.0's published algorithm: search space, mutation, parents, csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from detector import CONF_DIR
from detector.evolve import history
from detector.evolve.genetic import GeneticSettings, child, constrain, fitness, mutation_factors, select_parent
from detector.evolve.space import SearchSpace, base_values
from tests.helpers import compose_train

SETTINGS = GeneticSettings(parent="single", top_n=5, mutation_prob=0.8, sigma=0.2, factor_min=0.3, factor_max=3.0,
                           fitness_weights=(0.0, 0.0, 0.1, 0.9))  # fmt: skip


def yolov5_space() -> SearchSpace:
    return SearchSpace.load("yolov5")


def test_default_space_is_yolov5_v7_table():
    space = yolov5_space()
    hyp_keys = list(compose_train().hyp)
    assert sorted(space.keys) == sorted(hyp_keys)  # every hyp key has a gene (YOLOv5 looks gains up by key)
    fixed = {k for k, g in zip(space.keys, space.gains, strict=True) if g == 0}
    assert fixed == {"iou_t", "fl_gamma", "perspective", "fliplr"}
    i = space.keys.index("anchors")
    assert (space.gains[i], space.lower[i], space.upper[i]) == (2.0, 2.0, 10.0)
    i = space.keys.index("momentum")
    assert (space.gains[i], space.lower[i], space.upper[i]) == (0.3, 0.6, 0.98)


def test_a_folder_named_like_the_table_does_not_hide_it(tmp_path, monkeypatch):
    (tmp_path / "yolov5").mkdir()  # run from beside a YOLOv5 clone
    monkeypatch.chdir(tmp_path)
    space, table = SearchSpace.load("yolov5"), SearchSpace.load(Path(CONF_DIR) / "evolve" / "yolov5.yaml")
    assert space.keys == table.keys and np.array_equal(space.upper, table.upper)


def test_bad_space_tables_are_refused(tmp_path):
    with pytest.raises(ValueError, match="lr0 must be"):
        SearchSpace.from_mapping({"lr0": [1, 0.1]})
    with pytest.raises(ValueError, match="lower <= upper"):
        SearchSpace.from_mapping({"lr0": [1, 0.1, 0.01]})
    with pytest.raises(FileNotFoundError, match="nope"):
        SearchSpace.load(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match=r"\['lr_0'\] are not hyp keys"):
        SearchSpace.from_mapping({"lr_0": [1, 0, 1]}).check_keys(["lr0"])


def test_base_columns_append_anchors_last_like_yolov5():
    hyp = dict(compose_train().hyp)
    base = base_values(hyp, yolov5_space())
    assert list(base)[-1] == "anchors" and base["anchors"] == 3.0  # null in the hyp file: YOLOv5 appends 3
    assert list(base)[:-1] == [k for k in hyp if k != "anchors"]


def test_mutation_statistics_match_the_formula():
    """Factor 1 + gain * Bernoulli(0.8) * N(0, 1) * u * 0.2: about 80 % of genes change, E[(f - 1)^2] = 0.8 *
    E[u^2] * 0.04 * gain^2 with E[u^2] = 1/3, gain-0 genes never change."""
    gains = np.array([1.0] * 20 + [0.0] * 4 + [2.0] * 4)
    rng = np.random.default_rng(0)
    f = np.stack([mutation_factors(gains, SETTINGS, rng) for _ in range(20000)])
    assert (f[:, 20:24] == 1).all()
    changed = (f[:, :20] != 1).mean()
    assert changed == pytest.approx(0.8, abs=0.01)
    ms = ((f[:, :20] - 1) ** 2).mean()
    assert ms == pytest.approx(0.8 / 3 * 0.04, rel=0.05)
    assert ((f[:, 24:] - 1) ** 2).mean() == pytest.approx(4 * 0.8 / 3 * 0.04, rel=0.08)
    assert f.min() >= 0.3 and f.max() <= 3.0
    assert ((f != 1).sum(1) >= 1).all()  # redrawn until one gene changes
    # u is one draw per child: within a child the changes share one scale, so their sizes correlate.
    sizes = np.abs(f[:, :20] - 1).mean(1)
    assert sizes.std() / sizes.mean() > 0.4


def test_parents_come_from_the_top_n_weighted_by_fitness():
    rng = np.random.default_rng(0)
    genes = np.arange(10, dtype=float)[:, None] * np.ones((1, 3))
    fit = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5, 0.05])
    picks = [select_parent(genes, fit, SETTINGS, rng)[1][0] for _ in range(4000)]
    assert set(picks) == {1, 3, 5, 7}  # the 5 best rows; the 5th has weight 1e-6 (fitness minus the top's minimum)
    counts = np.bincount(picks, minlength=10)
    w = fit[[1, 3, 5, 7, 8]] - 0.5 + 1e-6  # fitness minus the top's minimum
    assert counts[[1, 3, 5, 7, 8]] / 4000 == pytest.approx(w / w.sum(), abs=0.03)
    weighted = GeneticSettings(**{**SETTINGS.__dict__, "parent": "weighted"})
    parent, rows = select_parent(genes, fit, weighted, rng)
    assert sorted(rows) == [1, 3, 5, 7, 8]
    assert parent == pytest.approx((genes[[1, 3, 5, 7, 8]] * w[:, None]).sum(0) / w.sum())


def test_children_stay_inside_their_limits_and_fixed_genes_keep_the_parent():
    space = yolov5_space()
    base = np.array([base_values(dict(compose_train().hyp), space)[k] for k in space.keys])
    assert np.array_equal(child(None, None, base, space, SETTINGS, np.random.default_rng(0))[0], constrain(base, space))
    genes, fit = base[None], np.ones(1)
    for n in range(150):
        vec, rows = child(genes, fit, base, space, SETTINGS, np.random.default_rng([7, n]))
        assert rows == [0]
        assert (vec >= space.lower).all() and (vec <= space.upper).all()
        assert np.array_equal(vec[space.gains == 0], constrain(base, space)[space.gains == 0])
        assert np.array_equal(vec, np.round(vec, 5))
    assert np.array_equal(constrain(np.array([0.123456789] * len(space.keys)), space)[:1], [0.1])  # lr0 <= 0.1


def test_fitness_weights_the_first_four_results():
    assert fitness(np.array([[1.0, 1.0, 0.5, 0.25, 9, 9, 9]]), (0, 0, 0.1, 0.9)) == pytest.approx([0.275])


def test_csv_is_yolov5s_layout_and_best_row_becomes_a_hyp_file(tmp_path):
    keys = [*history.RESULT_KEYS, "lr0", "momentum"]
    csv = tmp_path / "evolve.csv"
    history.append_row(csv, keys, [0.5, 0.4, 0.3, 0.123456789, 0.1, 0.2, 0.3], {"lr0": 0.01, "momentum": 0.937})
    history.append_row(csv, keys, [0.5, 0.4, 0.6, 0.2, 0.1, 0.2, 0.3], {"lr0": 0.02, "momentum": 0.9})
    history.append_row(csv, keys, [0.5, 0.4, 0.6, 0.2, 0.1, 0.2, 0.3], {"lr0": 0.03, "momentum": 0.8})
    lines = csv.read_text().splitlines()
    assert lines[0] == ",".join(f"{k:>20s}" for k in keys)
    assert lines[1].split(",")[3] == f"{0.123456789:20.5g}" == "             0.12346"
    assert all(len(f) == 20 for line in lines for f in line.split(","))
    with open(csv, "a") as f:
        f.write("   0.1,   0.2")  # a row cut by a kill
    got_keys, values = history.read_csv(csv)
    assert got_keys == keys and values.shape == (3, 9)
    fit = fitness(values, (0, 0, 0.1, 0.9))
    best = history.write_best(tmp_path / "hyp_evolve.yaml", keys, values, fit)
    assert best == 1  # the first maximum, as np.argmax
    text = (tmp_path / "hyp_evolve.yaml").read_text()
    assert text.splitlines()[1:3] == ["# Best generation: 1", "# Last generation: 2"]
    assert yaml.safe_load(text) == {"lr0": 0.02, "momentum": 0.9}
    with pytest.raises(ValueError, match="columns"):
        history.append_row(csv, keys[:-1], [0] * 7, {"lr0": 1})
