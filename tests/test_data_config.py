"""Dataset yaml parsing, image discovery and label path mapping (detector.data.config)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from detector.data.config import img2label_paths, list_image_files, load_data_config


def _img(path: Path, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), 128, np.uint8))
    return path


def _yaml(path: Path, d: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    """A small dataset: ds/images/{train,val}/*.jpg with a nested folder and a .PNG."""
    root = tmp_path / "datasets" / "ds"
    for name in ("a.jpg", "b.jpg", "sub/c.PNG"):
        _img(root / "images" / "train" / name)
    _img(root / "images" / "val" / "v.jpg")
    (root / "images" / "train" / "notes.txt").write_text("not an image")
    return root


def test_folder_sources_names_list(ds: Path, tmp_path: Path) -> None:
    y = _yaml(ds / "data.yaml", {"path": str(ds), "train": "images/train", "val": "images/val", "names": ["a", "b"]})
    cfg = load_data_config(str(y), datasets_dir=tmp_path / "datasets", cwd=tmp_path)
    assert cfg.yaml_file == y.resolve()
    assert cfg.path == ds.resolve()
    assert cfg.train == [ds.resolve() / "images" / "train"]
    assert cfg.val == [ds.resolve() / "images" / "val"]
    assert cfg.test == []
    assert cfg.names == {0: "a", 1: "b"} and cfg.nc == 2
    files = list_image_files(cfg.train)
    assert [Path(f).name for f in files] == ["a.jpg", "b.jpg", "c.PNG"]  # recursive, case-insensitive, sorted
    assert all(os.path.isabs(f) for f in files)
    assert (
        list_image_files(str(cfg.train[0])) == list_image_files(cfg.train[0]) == files
    )  # one source, not its characters


def test_names_dict_and_nc(ds: Path, tmp_path: Path) -> None:
    d = {
        "path": str(ds),
        "train": "images/train",
        "val": "images/val",
        "names": {1: "dog", 0: "cat"},
        "nc": 2,
    }
    cfg = load_data_config(str(_yaml(ds / "d.yaml", d)), tmp_path)
    assert cfg.names == {0: "cat", 1: "dog"} and cfg.nc == 2
    d["nc"] = 3
    with pytest.raises(ValueError, match=r"nc: 3 does not match the 2 entries of names"):
        load_data_config(str(_yaml(ds / "d.yaml", d)), tmp_path)
    d.pop("nc")
    d["names"] = {0: "cat", 2: "dog"}
    with pytest.raises(ValueError, match="without gaps|no gaps"):
        load_data_config(str(_yaml(ds / "d.yaml", d)), tmp_path)


def test_txt_list_with_dot_slash_and_relative_lines(ds: Path, tmp_path: Path) -> None:
    (ds / "train.txt").write_text("./images/train/a.jpg\nimages/train/sub/c.PNG\n\n./images/train/a.jpg\n")
    (ds / "val.txt").write_text(str(ds / "images" / "val" / "v.jpg") + "\n")
    y = _yaml(ds / "data.yaml", {"path": str(ds), "train": "train.txt", "val": "val.txt", "names": ["x"]})
    cfg = load_data_config(str(y), tmp_path)
    files = list_image_files(cfg.train)
    assert files == [str(ds / "images" / "train" / "a.jpg"), str(ds / "images" / "train" / "sub" / "c.PNG")]
    assert list_image_files(cfg.val) == [str(ds / "images" / "val" / "v.jpg")]


def test_list_of_folders_and_optional_test(ds: Path, tmp_path: Path) -> None:
    d = {"path": str(ds), "train": ["images/train", "images/val"], "val": "images/val", "test": "images/val"}
    d["names"] = ["x"]
    cfg = load_data_config(str(_yaml(ds / "data.yaml", d)), tmp_path)
    assert len(cfg.train) == 2 and cfg.test == [ds.resolve() / "images" / "val"]
    assert len(list_image_files(cfg.train)) == 4


def test_relative_path_resolution_order(ds: Path, tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    elsewhere = tmp_path / "somewhere" / "cfg"
    elsewhere.mkdir(parents=True)
    y = _yaml(elsewhere / "data.yaml", {"path": "ds", "train": "images/train", "val": "images/val", "names": ["x"]})
    # not under cwd, not next to the yaml -> datasets_dir
    assert load_data_config(str(y), datasets, cwd=tmp_path).path == ds.resolve()
    # next to the yaml wins over datasets_dir
    local = elsewhere / "ds"
    _img(local / "images" / "train" / "z.jpg")
    _img(local / "images" / "val" / "z.jpg")
    assert load_data_config(str(y), datasets, cwd=tmp_path).path == local.resolve()
    # cwd wins over both; a relative yaml path is relative to cwd too
    cwd = tmp_path / "work"
    _img(cwd / "ds" / "images" / "train" / "q.jpg")
    _img(cwd / "ds" / "images" / "val" / "q.jpg")
    cfg = load_data_config(os.path.relpath(y, cwd), datasets, cwd=cwd)
    assert cfg.path == (cwd / "ds").resolve()
    # YOLOv5 layout: path: ../datasets/coco128 resolves against datasets_dir
    y2 = _yaml(
        elsewhere / "c.yaml",
        {"path": "../datasets/ds", "train": "images/train", "val": "images/val"} | {"names": ["x"]},
    )
    assert load_data_config(str(y2), datasets, cwd=tmp_path / "nowhere").path == ds.resolve()


def test_missing_path_names_key_value_and_tried(tmp_path: Path) -> None:
    y = _yaml(tmp_path / "d.yaml", {"path": "nope", "train": "images/train", "val": "images/val", "names": ["x"]})
    with pytest.raises(FileNotFoundError) as e:
        load_data_config(str(y), tmp_path / "datasets", cwd=tmp_path)
    msg = str(e.value)
    assert "'path: nope'" in msg and str(tmp_path / "nope") in msg and str(tmp_path / "datasets" / "nope") in msg


def test_missing_train_val_and_keys(ds: Path, tmp_path: Path) -> None:
    y = _yaml(ds / "d.yaml", {"path": str(ds), "train": "images/missing", "val": "images/val", "names": ["x"]})
    with pytest.raises(FileNotFoundError, match=r"'train:' entry 'images/missing' not found"):
        load_data_config(str(y), tmp_path)
    for key in ("train", "val", "names"):
        d = {"path": str(ds), "train": "images/train", "val": "images/val", "names": ["x"]}
        d.pop(key)
        with pytest.raises(ValueError, match=f"required key '{key}:'"):
            load_data_config(str(_yaml(ds / "d.yaml", d)), tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset yaml 'absent.yaml' not found"):
        load_data_config("absent.yaml", tmp_path, cwd=tmp_path)
    with pytest.raises(ValueError, match="must be a mapping"):
        load_data_config(str(_yaml(ds / "list.yaml", [1, 2])), tmp_path)  # type: ignore[arg-type]


def test_download_is_ignored_with_warning(ds: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "ran"
    d = {"path": str(ds), "train": "images/train", "val": "images/val", "names": ["x"]}
    d["download"] = f"import pathlib; pathlib.Path('{marker}').touch()"
    with caplog.at_level(logging.WARNING):
        cfg = load_data_config(str(_yaml(ds / "d.yaml", d)), tmp_path)
    assert cfg.nc == 1 and not marker.exists()
    assert any("download" in r.message for r in caplog.records)


def test_list_image_files_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        list_image_files([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_image_files([tmp_path / "absent"])


def test_img2label_paths_uses_last_images() -> None:
    s = os.sep
    f = f"{s}data{s}images{s}set{s}images{s}x.y.JPG"
    assert img2label_paths([f]) == [f"{s}data{s}images{s}set{s}labels{s}x.y.txt"]
    assert img2label_paths([f"{s}d{s}images{s}a.png"]) == [f"{s}d{s}labels{s}a.txt"]
