"""AutoAnchor maths: metric against hand-computed values, label sizes, search quality, degenerate data."""

import logging

import numpy as np
import pytest

from detector.anchor_check import check_anchors
from detector.anchor_search import (
    bin_label_sizes,
    default_anchor_spread,
    evolve_anchors,
    kmean_anchors,
    population_fitness,
    spread_init,
)
from detector.anchors import (
    anchor_fitness,
    anchor_metrics,
    describe_anchors,
    label_wh,
    order_anchors_by_stride,
    ratio_metric,
)

DEFAULT = np.array(
    [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]],
    dtype=np.float64,
)
STRIDES = np.array([8.0, 16.0, 32.0])
GEN = 100


def elongated(n=3000, seed=0):
    """Thin tall boxes around 8 x 300 px: no default anchor covers them."""
    rng = np.random.default_rng(seed)
    return np.stack([8 * rng.lognormal(0, 0.15, n), 300 * rng.lognormal(0, 0.15, n)], 1)


# --- metric -------------------------------------------------------------------------------------------------
K2 = np.array([[10.0, 10.0], [20.0, 40.0]])
WH3 = np.array([[10.0, 10.0], [40.0, 20.0], [5.0, 80.0]])
# x per (label, anchor) by hand: r = wh / k, min(r, 1/r), then min over the two sides
X_HAND = np.array([[1.0, 0.25], [0.25, 0.5], [0.125, 0.25]])


def test_ratio_metric_hand_computed():
    np.testing.assert_allclose(ratio_metric(K2, WH3), X_HAND)


def test_bpr_aat_hand_computed_thr4():
    bpr, aat = anchor_metrics(K2, WH3, thr=4.0)
    # best = 1, 0.5, 0.25; only best > 0.25 counts, x > 0.25 per label: 1, 1, 0
    assert bpr == pytest.approx(2 / 3)
    assert aat == pytest.approx(2 / 3)
    assert anchor_fitness(K2, WH3, 4.0) == pytest.approx((1 + 0.5 + 0) / 3)


def test_bpr_aat_depend_on_thr():
    bpr, aat = anchor_metrics(K2, WH3, thr=5.0)  # 1/thr = 0.2: every best passes, x > 0.2 counts 2, 2, 1
    assert bpr == pytest.approx(1.0)
    assert aat == pytest.approx(5 / 3)
    assert anchor_fitness(K2, WH3, 5.0) == pytest.approx((1 + 0.5 + 0.25) / 3)
    bpr, aat = anchor_metrics(K2, WH3, thr=1.5)  # 1/thr = 0.667: only the exact match
    assert (bpr, aat) == (pytest.approx(1 / 3), pytest.approx(1 / 3))


def test_metric_matches_naive_formula_on_random_data():
    rng = np.random.default_rng(1)
    wh, k = rng.uniform(1, 300, (500, 2)), rng.uniform(2, 300, (9, 2))
    r = wh[:, None] / k[None]
    x = np.minimum(r, 1 / r).min(2)
    best = x.max(1)
    bpr, aat = anchor_metrics(k, wh, 4.0)
    assert bpr == pytest.approx((best > 0.25).mean())
    assert aat == pytest.approx((x > 0.25).sum(1).mean())
    assert anchor_fitness(k, wh, 4.0) == pytest.approx((best * (best > 0.25)).mean())


def test_log_space_fitness_equals_exact_fitness():
    rng = np.random.default_rng(2)
    wh, ks = rng.uniform(2, 300, (2000, 2)), rng.uniform(2, 300, (5, 9, 2))
    got = population_fitness(ks, np.log(wh.T).astype(np.float32), 4.0)
    want = [anchor_fitness(k, wh, 4.0) for k in ks]
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_metric_never_nan_with_zero_sizes_or_zero_anchors():
    k = np.array([[0.0, 1.0], [2.0, 3.0]])  # hyp['anchors'] placeholders contain a 0
    wh = np.array([[0.0, 5.0], [2.0, 3.0], [np.nan, 4.0]])
    bpr, aat = anchor_metrics(k, wh, 4.0)
    assert np.isfinite([bpr, aat]).all() and bpr == pytest.approx(0.5)
    assert anchor_metrics(k, np.zeros((0, 2)), 4.0) == (0.0, 0.0)


def test_describe_anchors_lines():
    lines = describe_anchors(K2[::-1], WH3, 4.0, 640)
    assert lines[0] == "thr=0.25: 0.6667 best possible recall, 0.67 anchors past thr"
    assert lines[1].startswith("n=2, img_size=640, metric_all=0.396/0.583-mean/best, past_thr=0.750-mean:")
    assert lines[1].endswith("10,10, 20,40")  # sorted by area


# --- label sizes --------------------------------------------------------------------------------------------
def test_label_wh_long_side_is_imgsz():
    labels = [
        np.array([[0, 0.5, 0.5, 0.5, 0.25], [1, 0.5, 0.5, 1.0, 1.0]], np.float32),
        np.zeros((0, 5), np.float32),
        np.array([[2, 0.5, 0.5, 0.1, 0.2]], np.float32),
    ]
    sizes_wh = np.array([[1280, 640], [500, 500], [300, 600]])
    wh = label_wh(labels, sizes_wh, 640)
    np.testing.assert_allclose(wh, [[320, 80], [640, 320], [32, 128]])
    assert wh.dtype == np.float32


def test_label_wh_per_image_jitter():
    labels = [
        np.array([[0, 0.5, 0.5, 0.5, 0.5], [0, 0.5, 0.5, 0.25, 0.25]]),
        np.array([[0, 0.5, 0.5, 0.5, 0.5]]),
    ]
    sizes_wh = np.array([[640, 640], [640, 640]])
    wh = label_wh(labels, sizes_wh, 640, rng=np.random.default_rng(3))
    s = np.random.default_rng(3).uniform(0.9, 1.1, size=(2, 1))
    np.testing.assert_allclose(wh, [[320 * s[0, 0]] * 2, [160 * s[0, 0]] * 2, [320 * s[1, 0]] * 2], rtol=1e-6)


def test_label_wh_drops_bad_rows_and_checks_lengths(caplog):
    labels = [
        np.array([[0, 0.5, 0.5, np.nan, 0.2], [0, 0.5, 0.5, 0.1, 0.2]]),
        np.array([[0, 0.5, 0.5, 0.1, 0.1]]),
    ]
    with caplog.at_level(logging.WARNING):
        wh = label_wh(labels, np.array([[640, 640], [0, 0]]), 640)
    np.testing.assert_allclose(wh, [[64, 128]])
    assert "dropped 2 of 3 labels" in caplog.text
    with pytest.raises(ValueError, match="2 label arrays but 1 image sizes"):
        label_wh(labels, np.array([[640, 640]]), 640)
    assert label_wh([], np.zeros((0, 2)), 640).shape == (0, 2)


# --- search -------------------------------------------------------------------------------------------------
def test_kmean_anchors_fits_elongated_boxes():
    wh = elongated()
    assert anchor_metrics(DEFAULT.reshape(-1, 2), wh, 4.0)[0] < 0.1
    k = kmean_anchors(wh, 9, 640, 4.0, gen=GEN, rng=np.random.default_rng(0))
    assert k.shape == (9, 2) and k.dtype == np.float32
    assert (np.diff(k.prod(1)) >= 0).all()
    assert anchor_metrics(k, wh, 4.0)[0] > 0.98
    assert (k >= 2.0).all()


def test_evolution_never_worse_and_improves_a_bad_start():
    wh = elongated(1000)
    start = np.full((9, 2), 50.0)
    k, f = evolve_anchors(start, wh, 4.0, GEN, np.random.default_rng(0))
    assert f == pytest.approx(anchor_fitness(k, wh, 4.0), rel=1e-4)
    assert f > anchor_fitness(start, wh, 4.0) + 0.3
    k1, f1 = evolve_anchors(start, wh, 4.0, GEN, np.random.default_rng(0), population=1, climbers=1)
    assert f >= f1  # a population per generation explores at least as well as YOLOv5's one candidate
    assert f1 > anchor_fitness(start, wh, 4.0)  # (1 + 1) still climbs


def test_kmean_anchors_is_deterministic_for_a_seed():
    wh = elongated(800)
    a = kmean_anchors(wh, 6, 640, 4.0, gen=20, rng=np.random.default_rng(5), verbose=False)
    b = kmean_anchors(wh, 6, 640, 4.0, gen=20, rng=np.random.default_rng(5), verbose=False)
    np.testing.assert_array_equal(a, b)


def test_binned_sizes_count_every_label_once_within_one_grid_step():
    rng = np.random.default_rng(0)
    wh = np.exp(rng.normal(3.0, 1.0, (20000, 2)))
    sizes, counts = bin_label_sizes(wh, 0.08)
    assert counts.sum() == len(wh) and len(sizes) < len(wh) / 3
    # each bin sits at the mean of its labels, inside their grid cell (so within one step in log size of each),
    # and holds exactly the labels of that cell
    cells, per_cell = np.unique(np.floor(np.log(wh) / 0.08), axis=0, return_counts=True)
    size_cells = np.floor(np.log(sizes) / 0.08)
    order = np.lexsort(size_cells.T[::-1])
    np.testing.assert_array_equal(size_cells[order], cells)
    np.testing.assert_array_equal(counts[order], per_cell)
    same, ones = bin_label_sizes(wh, None)
    np.testing.assert_array_equal(same, wh)
    np.testing.assert_array_equal(ones, np.ones(len(wh)))


def test_weighted_fitness_counts_a_label_weight_times_and_binning_changes_little():
    rng = np.random.default_rng(1)
    wh = np.exp(rng.normal(3.0, 0.8, (300, 2)))
    reps = rng.integers(1, 5, len(wh))
    cands = np.exp(rng.normal(3.0, 0.8, (4, 9, 2)))
    log = lambda a: np.log(a.T).astype(np.float32)  # noqa: E731
    weighted = population_fitness(cands, log(wh), 4.0, reps.astype(float))
    repeated = population_fitness(cands, log(np.repeat(wh, reps, 0)), 4.0)
    np.testing.assert_allclose(weighted, repeated, rtol=1e-6)
    many = np.exp(rng.normal(3.0, 0.8, (20000, 2)))
    sizes, counts = bin_label_sizes(many, 0.08)
    exact = [anchor_fitness(c, many, 4.0) for c in cands]
    np.testing.assert_allclose(population_fitness(cands, log(sizes), 4.0, counts), exact, atol=2e-3)


def test_subsample_result_rescored_on_all_boxes():
    wh = elongated(5000)
    k = kmean_anchors(wh, 9, 640, 4.0, gen=30, rng=np.random.default_rng(0), kmeans_boxes=500)
    assert anchor_metrics(k, wh, 4.0)[0] > 0.98


# --- check_anchors ------------------------------------------------------------------------------------------
def test_check_anchors_replaces_poor_anchors():
    wh = elongated()
    res = check_anchors(wh, DEFAULT, STRIDES, 4.0, 640, gen=GEN, rng=np.random.default_rng(0))
    assert res.replaced and res.anchors.shape == (3, 3, 2)
    assert res.old_bpr < 0.1 and res.new_bpr > 0.98
    assert res.new_bpr == pytest.approx(anchor_metrics(res.anchors.reshape(-1, 2), wh, 4.0)[0])
    assert (np.diff(res.anchors.reshape(-1, 2).prod(1)) >= 0).all()  # area order = stride order
    assert "Done" in res.summary() and "Best Possible Recall (BPR)" in res.summary()


def test_check_anchors_keeps_anchors_that_fit():
    rng = np.random.default_rng(0)
    wh = DEFAULT.reshape(-1, 2)[rng.integers(0, 9, 2000)] * rng.lognormal(0, 0.1, (2000, 2))
    res = check_anchors(wh, DEFAULT, STRIDES, 4.0, 640, gen=GEN, rng=rng)
    assert res.old_bpr > 0.98 and not res.replaced and res.new_bpr is None
    assert "Current anchors are a good fit to dataset ✅" in res.summary()


def test_check_anchors_force_takes_new_anchors_for_placeholders():
    placeholders = np.tile(np.arange(6, dtype=float).reshape(3, 2), (3, 1, 1))  # (0,1),(2,3),(4,5) per layer
    res = check_anchors(elongated(), placeholders, STRIDES, 4.0, 640, gen=GEN, force=True)
    assert res.replaced and res.new_bpr > 0.98


def test_check_anchors_keeps_old_when_new_not_better(monkeypatch):
    import detector.anchor_check as mod

    wh = elongated()
    monkeypatch.setattr(mod, "kmean_anchors", lambda *a, **k: np.full((9, 2), 1000.0, np.float32))
    res = check_anchors(wh, DEFAULT, STRIDES, 4.0, 640)
    assert not res.replaced and res.new_bpr == 0.0
    assert "original anchors better than new anchors" in res.summary()


def test_stride_order_flip():
    a = DEFAULT.copy()
    flipped, did = order_anchors_by_stride(a, [32, 16, 8])
    assert did and np.array_equal(flipped, a[::-1])
    same, did = order_anchors_by_stride(a, [8, 16, 32])
    assert not did and np.array_equal(same, a)
    res = check_anchors(elongated(), DEFAULT, [32, 16, 8], 4.0, 640, gen=20)
    areas = res.anchors.prod(-1).mean(-1)
    assert areas[0] > areas[-1]  # largest anchors on the stride-32 layer


def test_check_anchors_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(nl, na, 2\)"):
        check_anchors(elongated(10), DEFAULT.reshape(-1, 2), STRIDES)
    with pytest.raises(ValueError, match="2 strides for 3 layers"):
        check_anchors(elongated(10), DEFAULT, [8, 16])


# --- degenerate data (YOLOv5 #3482, #4528) ---------------------------------------------------------------
@pytest.mark.parametrize(
    "wh, message",
    [
        (np.array([[10, 20], [30, 40], [50, 60]] * 20, float), "only 3 distinct label sizes for 9 anchors"),
        (np.full((500, 2), 37.0), "only 1 distinct label sizes"),
        (np.full((50, 2), 1.5), "all 50 labels are under 2.0 px"),
        (np.array([[10, 20], [30, 40]]), "only 2 distinct"),  # a single image with two labels
        (np.zeros((0, 2)), "no labels"),
        (np.array([[np.nan, 5.0], [np.inf, 2]]), "no labels"),
    ],
)
def test_degenerate_data_warns_and_stays_finite(wh, message, caplog):
    with caplog.at_level(logging.WARNING, logger="detector.anchor_search"):
        k = kmean_anchors(wh, 9, 640, 4.0, gen=30, rng=np.random.default_rng(0))
    assert message in caplog.text
    assert k.shape == (9, 2) and np.isfinite(k).all() and (k >= 2.0).all()
    if len(wh) and np.isfinite(wh).all() and (wh >= 2).any():
        assert anchor_metrics(k, wh, 4.0)[0] == 1.0  # the few distinct boxes are still all covered


def test_kmeans_with_empty_clusters_falls_back(caplog):
    wh = np.concatenate([np.full((2000, 2), 50.0), np.random.default_rng(0).uniform(5, 500, (9, 2))])
    with caplog.at_level(logging.WARNING, logger="detector.anchor_search"):
        k = kmean_anchors(wh, 9, 640, 4.0, gen=30, rng=np.random.default_rng(0))
    assert "kmeans requested 9 points but returned" in caplog.text  # YOLOv5 #3482, here a fallback
    assert np.isfinite(k).all() and k.shape == (9, 2)
    assert anchor_metrics(k, wh, 4.0)[0] == 1.0  # the rare outliers keep anchors too


def test_spread_init_covers_identical_boxes():
    k = spread_init(np.full((10, 2), 40.0), 9, 4.0)
    assert len(np.unique(k, axis=0)) == 9
    assert anchor_metrics(k, np.array([[40.0, 40.0]]), 4.0)[1] == 9  # every copy still covers the box


def test_check_anchors_zero_labels(caplog):
    res = check_anchors(np.zeros((0, 2)), DEFAULT, STRIDES, 4.0, 640)
    assert not res.replaced and "no labels" in res.summary()
    bad = np.zeros((3, 3, 2))
    res = check_anchors(np.zeros((0, 2)), bad, STRIDES, 4.0, 640)
    assert res.replaced and np.isfinite(res.anchors).all() and (res.anchors > 0).all()
    np.testing.assert_allclose(res.anchors.reshape(-1, 2), default_anchor_spread(9, 640))


def test_check_anchors_all_tiny_boxes_never_nan():
    wh = np.random.default_rng(0).uniform(0.2, 1.9, (300, 2))
    res = check_anchors(wh, DEFAULT, STRIDES, 4.0, 640, gen=30)
    assert np.isfinite([res.old_bpr, res.old_aat, res.new_bpr, res.new_aat]).all()
    assert res.replaced and np.isfinite(res.anchors).all()
