"""The built-in shapes dataset generator (detector.data.shapes)."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

import detector.data.shapes as shapes
from detector.boxes import xywhn2xyxy
from detector.data.config import list_image_files, load_data_config
from detector.data.images import read_image
from detector.data.labels import load_labels
from detector.data.shapes import CLASSES, ensure_shapes_dataset, render_sample

SMALL = {"n_train": 12, "n_val": 4, "seed": 3}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_counts_and_yaml(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    y = ensure_shapes_dataset(root, **SMALL)
    assert y == root.absolute() / "data.yaml"
    d = yaml.safe_load(y.read_text())
    assert d == {
        "path": str(root.absolute()),
        "train": "images/train",
        "val": "images/val",
        "names": list(CLASSES),
    }
    for split, n in (("train", 12), ("val", 4)):
        assert len(list((root / "images" / split).glob("*.jpg"))) == n
        assert len(list((root / "labels" / split).glob("*.txt"))) == n
    assert not list(tmp_path.glob(".shapes.tmp-*"))  # no leftovers
    cfg = load_data_config(str(y), tmp_path, cwd=tmp_path / "elsewhere")
    assert cfg.nc == len(CLASSES) == 6 and cfg.train == [root / "images" / "train"]
    ls = load_labels(list_image_files(cfg.train), nc=cfg.nc)
    assert len(ls.im_files) == 12 and ls.report.corrupt == 0
    assert set(ls.report.counts) <= {"empty_label"}  # only background images, no bad input


def test_builtin_name_uses_datasets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapes, "ensure_shapes_dataset", functools.partial(ensure_shapes_dataset, **SMALL))
    cfg = load_data_config("shapes", tmp_path / "datasets", cwd=tmp_path)
    assert cfg.yaml_file == tmp_path / "datasets" / "shapes" / "data.yaml"
    assert len(list_image_files(cfg.val)) == 4


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = _files(Path(ensure_shapes_dataset(tmp_path / "a", **SMALL)).parent)
    b = _files(Path(ensure_shapes_dataset(tmp_path / "b", workers=2, **SMALL)).parent)
    assert a.pop("data.yaml") != b.pop("data.yaml")  # only the absolute path differs
    assert a == b
    c = _files(Path(ensure_shapes_dataset(tmp_path / "c", **(SMALL | {"seed": 4}))).parent)
    assert c["images/train/train_00000.jpg"] != a["images/train/train_00000.jpg"]


def test_boxes_tightly_bound_drawn_pixels() -> None:
    n_objects, sizes, backgrounds = 0, [], 0
    for i in range(40):
        img, labels, owner = render_sample(np.random.default_rng(i))
        h, w = owner.shape
        assert img.shape == (h, w, 3) and img.dtype == np.uint8 and 128 <= max(h, w) <= 256
        assert labels.dtype == np.float32 and labels.shape[1] == 5
        assert set(np.unique(owner)) - {-1} == set(range(len(labels)))  # every drawn object is labelled
        backgrounds += len(labels) == 0
        for j, (c, *xywh) in enumerate(labels):
            assert 0 <= c < len(CLASSES)
            x1, y1, x2, y2 = xywhn2xyxy(np.array(xywh, np.float64), w, h).round().astype(int)
            ys, xs = np.nonzero(owner == j)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            sizes.append(max(x2 - x1, y2 - y1) / min(h, w))
        n_objects += len(labels)
    assert 40 <= n_objects <= 40 * 4 and backgrounds < 10
    assert min(sizes) < 0.15 and max(sizes) > 0.3  # small and large objects


def test_labels_on_disk_inside_image(tmp_path: Path) -> None:
    root = ensure_shapes_dataset(tmp_path / "s", **SMALL).parent
    for lb in (root / "labels").rglob("*.txt"):
        rows = np.array([r.split() for r in lb.read_text().splitlines()], np.float64).reshape(-1, 5)
        im = read_image(str(lb).replace("/labels/", "/images/").replace(".txt", ".jpg"))
        h, w = im.shape[:2]
        xyxy = xywhn2xyxy(rows[:, 1:], w, h)
        assert (xyxy >= -1e-3).all() and (xyxy[:, [0, 2]] <= w + 1e-3).all() and (xyxy[:, [1, 3]] <= h + 1e-3).all()
        assert (rows[:, 3:] > 0).all()


def test_second_call_does_not_regenerate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    ensure_shapes_dataset(root, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def boom(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(shapes, "_generate_split", boom)
    ensure_shapes_dataset(root, **SMALL)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    with pytest.raises(AssertionError, match="regenerated"):  # other parameters -> a new dataset
        ensure_shapes_dataset(root, **(SMALL | {"n_train": 5}))
    assert len(list((root / "images" / "train").glob("*.jpg"))) == 12  # the failed build left the old one intact


def test_new_parameters_replace_old_dataset_and_clean_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "s"
    ensure_shapes_dataset(root, **SMALL)
    stale = tmp_path / ".s.tmp-killed"
    (stale / "images").mkdir(parents=True)
    ensure_shapes_dataset(root, **(SMALL | {"n_train": 5}))
    assert len(list((root / "images" / "train").glob("*.jpg"))) == 5
    assert not stale.exists() and not list(tmp_path.glob(".s.old-*"))


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "s" / "mine").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a generated shapes dataset"):
        ensure_shapes_dataset(tmp_path / "s", **SMALL)
    assert (tmp_path / "s" / "mine").is_dir()


def test_concurrent_callers_agree(tmp_path: Path) -> None:
    results, errors = [], []

    def call() -> None:
        try:
            results.append(ensure_shapes_dataset(tmp_path / "s", **SMALL))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert len(list((tmp_path / "s" / "images" / "train").glob("*.jpg"))) == 12
    assert not list(tmp_path.glob(".s.tmp-*"))
