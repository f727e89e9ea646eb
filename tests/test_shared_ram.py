"""cache=ram under DDP: the node's local rank 0 writes one shared file, the other ranks map it without decoding
(the two-rank run is in test_validation_ddp)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from detector.data.image_cache import ImageLoader
from detector.data.images import read_image
from detector.data.shared_ram import SharedImages, shared_ram_for
from tests.helpers import make_dataset
from tests.test_dataset import HYP0, HYP_LOW, make_labelset


class CountingReader:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: str, reduce: int) -> np.ndarray | None:
        self.calls += 1
        return read_image(path, reduce)


@pytest.fixture
def labelset(tmp_path):
    return make_labelset(tmp_path / "images", n=8)


def loaders(labelset, tmp_path, imgsz=64, augment=True, **kw):
    """(writer, reader, writer's reader calls, reader's reader calls) sharing one file under tmp_path."""
    counts = CountingReader(), CountingReader()
    files, sizes = labelset.im_files, labelset.sizes_wh
    w = ImageLoader(files, imgsz, augment, counts[0], "ram", sizes_wh=sizes,
                    shared=shared_ram_for("t", "train", True, tmp_path), **kw)  # fmt: skip
    r = ImageLoader(files, imgsz, augment, counts[1], "ram", sizes_wh=sizes,
                    shared=shared_ram_for("t", "train", False, tmp_path), **kw)  # fmt: skip
    return w, r, counts


def test_reader_maps_the_writers_images_without_decoding(labelset, tmp_path):
    w, r, (wc, rc) = loaders(labelset, tmp_path)
    plain = ImageLoader(labelset.im_files, 64, True, read_image, None)
    assert isinstance(r.ram, SharedImages) and wc.calls == len(labelset.im_files) and rc.calls == 0
    shared_ram_for("t", "train", True, tmp_path).unlink()
    assert not list(tmp_path.glob("detector-*"))  # the mappings outlive the files
    for i in range(len(labelset.im_files)):
        (a, hw0, hw), (b, hw0b, hwb), (c, *_) = plain.load(i), r.load(i), w.load(i)
        assert np.array_equal(a, b) and np.array_equal(a, c) and (hw0, hw) == (hw0b, hwb)
        assert not b.flags.writeable  # an in-place change would corrupt every rank's copy: refused
    assert rc.calls == 0


def test_samples_from_the_shared_cache_equal_uncached_ones(labelset, tmp_path):
    # every path that renders an image (mosaic, letterbox, rect) reads the read-only views without writing them
    for kw in (dict(hyp=HYP_LOW, augment=True), dict(hyp=HYP0, augment=False, rect=True), dict(hyp=HYP0, augment=True)):
        plain = make_dataset(labelset, imgsz=64, **kw)
        w = make_dataset(labelset, imgsz=64, cache="ram", shared_ram=shared_ram_for("s", "x", True, tmp_path), **kw)
        r = make_dataset(labelset, imgsz=64, cache="ram", shared_ram=shared_ram_for("s", "x", False, tmp_path), **kw)
        assert isinstance(w.images.ram, SharedImages) and isinstance(r.images.ram, SharedImages)
        for i in range(4):
            (a, la, *_), (b, lb, *_) = plain[(i, 3)], r[(i, 3)]
            # the RAM cache is resampled from the training size, the plain loader from the file (as test_dataset)
            assert torch.allclose(la, lb, atol=0.5 / 64) and (a.float() - b.float()).abs().mean() < 2
        shared_ram_for("s", "x", True, tmp_path).unlink()


def test_no_room_or_other_images_means_no_cache_with_a_warning(labelset, tmp_path, monkeypatch, caplog):
    from detector.data import image_cache

    monkeypatch.setattr(image_cache, "available_ram", lambda: 1000)
    with caplog.at_level(logging.WARNING):
        w, r, (_, rc) = loaders(labelset, tmp_path)
    assert w.ram is None and r.ram is None and "not caching" in caplog.text and "available memory" in caplog.text
    assert not list(tmp_path.glob("detector-*"))
    monkeypatch.undo()
    loaders(labelset, tmp_path)  # written for 8 images at 64 px
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        other = ImageLoader(labelset.im_files, 96, True, read_image, "ram", sizes_wh=labelset.sizes_wh,
                            shared=shared_ram_for("t", "train", False, tmp_path))  # fmt: skip
    assert other.ram is None and "written for other images" in caplog.text


def test_an_image_whose_size_differs_from_its_label_record_is_read_from_its_file(labelset, tmp_path):
    sizes = labelset.sizes_wh.copy()
    sizes[2, 0] *= 2  # the label cache is stale for image 2: another aspect ratio
    w = ImageLoader(labelset.im_files, 64, True, read_image, "ram", sizes_wh=sizes,
                    shared=shared_ram_for("z", "train", True, tmp_path))  # fmt: skip
    assert w.ram[2] is None and w.ram[1] is not None
    assert np.array_equal(w.load(2)[0], ImageLoader(labelset.im_files, 64, True, read_image, None).load(2)[0])
