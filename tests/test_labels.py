"""Label verification, the dataset report and the label cache (detector.data.labels/report/images)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import detector.data.labels as labels_mod
from detector.data.config import img2label_paths, list_image_files
from detector.data.images import exif_size, read_image
from detector.data.labels import default_cache_path, load_labels
from detector.data.report import DatasetReport

GOOD = "0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.1 0.1\n"


def _jpg(path: Path, w: int = 32, h: int = 24, exif_orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    if exif_orientation is None:
        im.save(path, quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(path, quality=90, exif=exif)
    return path


def _label(root: Path, stem: str, text: str) -> Path:
    p = root / "labels" / f"{stem}.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture
def bad_ds(tmp_path: Path) -> Path:
    """One image per bad-input kind, plus good ones; labels in root/labels."""
    root = tmp_path / "ds"
    im = root / "images"
    _jpg(im / "good1.jpg")
    _label(root, "good1", GOOD)
    cv2.imwrite(str(im / "good2.png"), np.zeros((30, 40, 3), np.uint8))
    _label(root, "good2", "2 0.1 0.1 0.5 0.2 0.3 0.6\n")  # polygon row
    data = _jpg(im / "trunc_src.jpg", 64, 48).read_bytes()
    (im / "trunc_src.jpg").unlink()
    (im / "trunc.jpg").write_bytes(data[: len(data) - 40])
    _label(root, "trunc", GOOD)
    (im / "zero.jpg").write_bytes(b"")
    _label(root, "zero", GOOD)
    (im / "text.jpg").write_text("this is not an image")
    _label(root, "text", GOOD)
    _jpg(im / "tiny.jpg", 5, 5)
    _label(root, "tiny", GOOD)
    _jpg(im / "rot.jpg", 40, 20, exif_orientation=6)
    _label(root, "rot", GOOD)
    for stem, text in {
        "oob": "0 0.5 0.5 1.2 0.3\n",
        "neg": "0 -0.1 0.5 0.2 0.2\n",
        "cols": "0 0.5 0.5 0.2\n",
        "cls": "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n",
        "dup": GOOD + "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n",
        "dup2": GOOD + "1 0.25 0.25 0.1 0.1\n",
        "empty": "\n",
    }.items():
        _jpg(im / f"{stem}.jpg")
        _label(root, stem, text)
    _jpg(im / "missing.jpg")
    return root


KEPT = {"good1.jpg", "good2.png", "trunc.jpg", "rot.jpg", "dup.jpg", "dup2.jpg", "empty.jpg", "missing.jpg"}


def test_each_bad_input_kind_is_reported_and_good_files_survive(bad_ds: Path) -> None:
    files = list_image_files([bad_ds / "images"])
    assert len(files) == 15
    ls = load_labels(files, nc=3)
    assert {Path(f).name for f in ls.im_files} == KEPT
    assert ls.label_files == img2label_paths(ls.im_files)
    r = ls.report
    assert (r.total, r.found, r.empty, r.missing, r.corrupt) == (15, 6, 1, 1, 7)
    assert r.lines() == [
        "1 zero-byte image files dropped",
        "1 files with an image extension that are not readable images dropped",
        "1 images smaller than 10 px dropped",
        "1 truncated JPEG files kept unchanged (set repair_jpeg=true to re-save them)",
        "1 EXIF-rotated images (sizes corrected)",
        "1 label files with a wrong column count, images dropped",
        "1 label files with negative values, images dropped",
        "1 label files with coordinates outside [0, 1], images dropped",
        "1 label files with a class id >= nc, images dropped",
        "3 duplicate label rows removed (2 files)",
        "1 empty label files (images kept as background)",
        "1 missing label files (images kept as background)",
    ]
    assert r.summary().endswith("6 images with labels, 2 backgrounds, 7 corrupt (of 15)")
    msgs = "\n".join(r.file_messages())
    assert "class id 5 >= nc=3" in msgs and "line 1: 4 values" in msgs

    by_name = {Path(f).name: i for i, f in enumerate(ls.im_files)}
    np.testing.assert_allclose(ls.labels[by_name["dup.jpg"]], np.loadtxt(GOOD.splitlines(), ndmin=2))
    assert ls.labels[by_name["dup.jpg"]].dtype == np.float32
    assert ls.labels[by_name["empty.jpg"]].shape == (0, 5) and ls.labels[by_name["missing.jpg"]].shape == (
        0,
        5,
    )
    assert ls.sizes_wh.dtype.kind == "i" and ls.sizes_wh.shape == (8, 2)
    assert tuple(ls.sizes_wh[by_name["rot.jpg"]]) == (20, 40)  # stored 40x20, EXIF orientation 6 -> w/h swapped
    assert tuple(ls.sizes_wh[by_name["good2.png"]]) == (40, 30)
    # polygon row: box from its min/max, segment kept
    np.testing.assert_allclose(ls.labels[by_name["good2.png"]], [[2, 0.3, 0.35, 0.4, 0.5]], atol=1e-6)
    assert len(ls.segments[by_name["good2.png"]]) == 1 and ls.segments[by_name["good2.png"]][0].shape == (
        3,
        2,
    )
    assert ls.segments[by_name["good1.jpg"]] == []

    saved = r.save(bad_ds / "report.txt").read_text()
    assert "3 duplicate label rows removed (2 files)" in saved and "zero.jpg" in saved


def test_exif_size_and_read_image_agree(bad_ds: Path) -> None:
    path = bad_ds / "images" / "rot.jpg"
    with Image.open(path) as im:
        assert im.size == (40, 20) and exif_size(im) == (20, 40)
    img = read_image(path)
    assert img is not None and img.shape == (40, 20, 3) and img.dtype == np.uint8
    half = read_image(path, reduce=2)  # decoded at half size, still turned upright
    assert half is not None and half.shape == (20, 10, 3)
    with pytest.raises(ValueError, match="reduce"):
        read_image(path, reduce=3)
    assert read_image(bad_ds / "images" / "text.jpg") is None
    assert read_image(bad_ds / "images" / "zero.jpg") is None
    assert read_image(bad_ds / "images" / "absent.jpg") is None


def test_unicode_path(tmp_path: Path) -> None:
    p = _jpg(tmp_path / "images" / "bild-ä漢.jpg")
    _label(tmp_path, "bild-ä漢", "").write_bytes(GOOD.encode("utf-8-sig"))  # with a BOM
    assert read_image(p).shape == (24, 32, 3)
    assert len(load_labels([str(p)]).labels[0]) == 2


def test_truncated_jpeg_untouched_unless_repair(bad_ds: Path) -> None:
    trunc = bad_ds / "images" / "trunc.jpg"
    before = trunc.read_bytes()
    assert not before.endswith(b"\xff\xd9")
    ls = load_labels([str(trunc)])
    assert trunc.read_bytes() == before and ls.report.count("jpeg_truncated") == 1
    assert read_image(trunc) is not None  # still loads
    os.chmod(trunc, 0o640)
    ls = load_labels([str(trunc)], repair_jpeg=True)
    assert trunc.stat().st_mode & 0o777 == 0o640  # permissions kept
    assert ls.report.count("jpeg_repaired") == 1 and ls.report.count("jpeg_truncated") == 0
    after = trunc.read_bytes()
    assert after != before and after.endswith(b"\xff\xd9")
    assert read_image(trunc).shape == (48, 64, 3)
    assert load_labels([str(trunc)]).report.lines() == []  # repaired file is now clean


def test_single_cls_skips_class_check_and_zeroes(bad_ds: Path) -> None:
    ls = load_labels(list_image_files([bad_ds / "images"]), nc=1, single_cls=True)
    assert "cls.jpg" in {Path(f).name for f in ls.im_files}
    assert all((lb[:, 0] == 0).all() for lb in ls.labels)
    assert ls.report.count("class_out_of_range") == 0


def test_no_labels_is_a_clear_error(tmp_path: Path) -> None:
    files = [str(_jpg(tmp_path / "images" / f"{i}.jpg")) for i in range(3)]
    _label(tmp_path, "0", "")
    with pytest.raises(ValueError, match=r"no usable labels in .*labels: 3 images, 0 with labels, 2 missing"):
        load_labels(files)


def test_thread_pool_matches_serial(bad_ds: Path) -> None:
    files = list_image_files([bad_ds / "images"]) * 3  # > 32 tasks: the pool path runs
    a, b = load_labels(files, nc=3, workers=1), load_labels(files, nc=3, workers=2)
    assert a.im_files == b.im_files and a.report.to_dict() == b.report.to_dict()
    assert all(np.array_equal(x, y) for x, y in zip(a.labels, b.labels, strict=True))


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the full scans load_labels runs (cache misses)."""
    calls: list[int] = []
    real = labels_mod._scan

    def counting(im_files, *args, **kwargs):
        calls.append(len(im_files))
        return real(im_files, *args, **kwargs)

    monkeypatch.setattr(labels_mod, "_scan", counting)
    return calls


def test_cache_reused_and_invalidated(bad_ds: Path, scans: list[int]) -> None:
    files = list_image_files([bad_ds / "images"])
    cache = default_cache_path([bad_ds / "images"], img2label_paths(files))
    assert cache == bad_ds / "labels.detector.cache"
    first = load_labels(files, cache, nc=3)
    assert cache.is_file() and scans == [15]
    second = load_labels(files, cache, nc=3)
    assert scans == [15]  # reused
    assert second.im_files == first.im_files and second.report.to_dict() == first.report.to_dict()
    assert all(np.array_equal(x, y) for x, y in zip(first.labels, second.labels, strict=True))
    np.testing.assert_array_equal(first.sizes_wh, second.sizes_wh)

    # an edit that keeps the file size (a later mtime, as any real edit has)
    lb = bad_ds / "labels" / "good1.txt"
    st = lb.stat()
    lb.write_text(GOOD.replace("0 0.5", "2 0.5"))
    assert lb.stat().st_size == st.st_size
    os.utime(lb, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = load_labels(files, cache, nc=3)
    assert scans == [15, 15]
    assert third.labels[third.im_files.index(str(bad_ds / "images" / "good1.jpg"))][0, 0] == 2

    # a different nc changes the class check: rebuilt
    load_labels(files, cache, nc=6)
    assert scans == [15, 15, 15]

    # an added image: rebuilt and included
    _jpg(bad_ds / "images" / "new.jpg")
    _label(bad_ds, "new", GOOD)
    files = list_image_files([bad_ds / "images"])
    fourth = load_labels(files, cache, nc=3)
    assert scans[-1] == 16 and str(bad_ds / "images" / "new.jpg") in fourth.im_files
    load_labels(files, cache, nc=3)
    assert len(scans) == 4

    # single_cls is applied after the cache: cached classes are not overwritten
    assert (load_labels(files, cache, nc=3, single_cls=True).labels[0][:, 0] == 0).all()
    assert (
        load_labels(files, cache, nc=3).labels[fourth.im_files.index(str(bad_ds / "images" / "good1.jpg"))][1, 0] == 1
    )


def test_corrupt_cache_rebuilt_and_unwritable_folder_warns(
    bad_ds: Path, scans: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    files = list_image_files([bad_ds / "images"])
    cache = bad_ds / "labels.cache"
    cache.write_bytes(b"garbage")
    ls = load_labels(files, cache, nc=3)
    assert scans == [15] and len(ls.im_files) == 8
    load_labels(files, cache, nc=3)
    assert scans == [15]  # the rebuilt cache is valid
    with caplog.at_level(logging.WARNING):
        ls = load_labels(files, bad_ds / "absent_dir" / "x.cache", nc=3)
    assert len(ls.im_files) == 8 and any("not writeable" in r.message for r in caplog.records)


def test_truncated_jpeg_repaired_when_cache_says_kept(bad_ds: Path, scans: list[int]) -> None:
    files = [str(bad_ds / "images" / "trunc.jpg"), str(bad_ds / "images" / "good1.jpg")]
    cache = bad_ds / "t.cache"
    load_labels(files, cache)
    ls = load_labels(files, cache, repair_jpeg=True)
    assert len(scans) == 2 and ls.report.count("jpeg_repaired") == 1
    load_labels(files, cache, repair_jpeg=True)
    assert len(scans) == 2  # cache written after the repair matches the repaired file


def test_report_roundtrip() -> None:
    r = DatasetReport(source="s", total=3, found=1, missing=1, empty=0, corrupt=1)
    r.add("duplicates", "a.jpg", "2 rows", items=2)
    r.add("zero_byte", "b.jpg")
    assert DatasetReport.from_dict(r.to_dict()) == r
    assert r.lines() == ["1 zero-byte image files dropped", "2 duplicate label rows removed (1 files)"]
    with pytest.raises(KeyError, match="unknown report kind"):
        r.add("nonsense", "c.jpg")
