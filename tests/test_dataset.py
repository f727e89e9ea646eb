"""YoloDataset: sample pipeline end to end, determinism, close-mosaic, rect batches, caching, bad images."""

import logging
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from detector.boxes import scale_boxes, xywhn2xyxy
from detector.data import image_cache
from detector.data.dataset import YoloDataset, rect_batch_hw
from detector.data.rendering import render_letterboxed
from detector.data.sampler import EpochSampler
from tests.helpers import PALETTE, make_dataset

HYP0 = dict.fromkeys(
    ["hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud", "fliplr",
     "mosaic", "mixup", "copy_paste"], 0.0)  # fmt: skip
HYP_LOW = HYP0 | dict(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, translate=0.1, scale=0.5, fliplr=0.5, mosaic=1.0)


def make_labelset(root: Path, n: int = 8, seed: int = 0, polygons: bool = False) -> SimpleNamespace:
    """PNG images (64-160 px) with 1-2 coloured rectangles each, as a LabelSet-like object."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    files, labels, sizes_wh, segments = [], [], [], []
    for i in range(n):
        h, w = int(rng.integers(64, 161)), int(rng.integers(64, 161))
        im = np.full((h, w, 3), 114, np.uint8)
        rows, segs = [], []
        for k in range(1 + i % 2):
            c = (2 * i + k) % len(PALETTE)
            bw, bh = int(rng.integers(14, w // 3)), int(rng.integers(14, h // 3))
            x1 = int(rng.integers(0, w // 2 - bw)) + (w // 2 if k else 0)
            y1 = int(rng.integers(0, h - bh))
            im[y1 : y1 + bh, x1 : x1 + bw] = PALETTE[c]
            rows.append([c, (x1 + bw / 2) / w, (y1 + bh / 2) / h, bw / w, bh / h])
            segs.append(np.array([[x1, y1], [x1 + bw, y1], [x1 + bw, y1 + bh], [x1, y1 + bh]], np.float32) / (w, h))
        f = root / f"im{i}.png"
        cv2.imwrite(str(f), im)
        files.append(str(f))
        labels.append(np.array(rows, np.float32))
        sizes_wh.append((w, h))
        segments.append(segs if polygons else [])
    return SimpleNamespace(im_files=files, labels=labels, sizes_wh=np.array(sizes_wh), segments=segments)


def pixel_labels(img: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(HWC BGR image, labels [cls, x1, y1, x2, y2] in pixels) from a dataset sample."""
    im = img.numpy().transpose(1, 2, 0)[..., ::-1]
    h, w = im.shape[:2]
    px = labels[:, 1:].numpy().copy()
    px[:, 1:] = xywhn2xyxy(px[:, 1:], w, h)
    return np.ascontiguousarray(im), px


def assert_on_pixels(im, px, tol):
    for c, x1, y1, x2, y2 in px:
        xa, ya = max(int(x1) - 3, 0), max(int(y1) - 3, 0)
        crop = im[ya : int(y2) + 4, xa : int(x2) + 4].astype(int)
        mask = (np.abs(crop - PALETTE[int(c)]).max(-1) < 60).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        assert n > 1, f"class {int(c)}: no pixels in its box"
        x, y, w, h = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])), :4]
        np.testing.assert_allclose([x + xa, y + ya, x + xa + w, y + ya + h], [x1, y1, x2, y2], atol=tol)


@pytest.fixture(scope="module")
def labelset(tmp_path_factory):
    return make_labelset(tmp_path_factory.mktemp("ds") / "images")


@pytest.mark.parametrize("one_pass", [True, False])  # with degrees 0: the one-pass mosaic, or YOLOv5's canvas
@pytest.mark.parametrize("degrees", [0.0, 5.0])  # 5: the canvas path on both settings
def test_mosaic_sample_keeps_boxes_on_pixels(labelset, degrees, one_pass):
    hyp = HYP0 | dict(mosaic=1.0, translate=0.1, scale=0.5, degrees=degrees, fliplr=0.5, flipud=0.5)
    ds = make_dataset(labelset, imgsz=96, hyp=hyp, augment=True, one_pass=one_pass)
    n_boxes = 0
    for index in range(len(ds)):
        img, labels, path, info = ds[(index, 0)]
        assert img.shape == (3, 96, 96) and img.dtype == torch.uint8 and info is None
        assert path == labelset.im_files[index]
        im, px = pixel_labels(img, labels)
        big = px[(px[:, 3] - px[:, 1] > 4) & (px[:, 4] - px[:, 2] > 4)]  # thin slivers are all edge
        assert_on_pixels(im, big, tol=2.5)
        n_boxes += len(big)
        assert (labels[:, 0] == 0).all() and (labels[:, 2:] >= 0).all() and (labels[:, 2:] <= 1).all()
    assert n_boxes > 10


@pytest.mark.parametrize("one_pass", [True, False])  # with degrees 0: one-pass rendering, or letterbox + warp
@pytest.mark.parametrize("degrees", [0.0, 10.0])
def test_letterbox_sample_keeps_boxes_on_pixels_with_warp(labelset, degrees, one_pass):
    hyp = HYP0 | dict(degrees=degrees, shear=3.0 if degrees else 0.0, scale=0.3, translate=0.1)
    ds = make_dataset(labelset, imgsz=128, hyp=hyp, augment=True, one_pass=one_pass)
    for index in range(len(ds)):
        img, labels, _, info = ds[index]
        assert img.shape == (3, 128, 128) and info is not None
        im, px = pixel_labels(img, labels)
        assert_on_pixels(im, px[(px[:, 3] - px[:, 1] > 4) & (px[:, 4] - px[:, 2] > 4)], tol=2.5)


def letterboxed(ds, index):
    """Sample ``index`` letterboxed to imgsz and warped by the draws of generator ``index``, without the rest of
    the recipe."""
    warp = ds.recipe.warp_for((ds.imgsz, ds.imgsz), np.random.default_rng(index))
    return render_letterboxed(ds.source, ds.recipe.rendering, index, (ds.imgsz, ds.imgsz), warp)


@pytest.mark.parametrize("pixel_centres", [False, True])
def test_one_pass_letterbox_matches_letterbox_then_warp(labelset, pixel_centres):
    from detector.data.geometry import apply_warp, draw_warp, warp_targets
    from detector.data.letterbox import letterbox, letterbox_geometry
    from detector.data.photometric import to_bgr

    hyp = HYP0 | dict(scale=0.5, translate=0.1)
    kw = dict(imgsz=96, hyp=hyp, augment=True, pixel_centres=pixel_centres)
    ds = make_dataset(labelset, one_pass=True, **kw)
    two_step = make_dataset(labelset, one_pass=False, **kw)
    for index in range(len(ds)):
        j, fast, labels, _ = letterboxed(ds, index)
        gains = {k: hyp[k] for k in ("degrees", "translate", "scale", "shear", "perspective")}
        warp = draw_warp((96, 96), np.random.default_rng(index), **gains)
        assert warp.axis_aligned
        im, _, (h, w) = ds.images.load(index)
        ref, ratio, pad = letterbox(im, 96)
        if pixel_centres:  # labels sit at the rounded borders the pixels were padded by
            top, _, left, _ = letterbox_geometry((h, w), 96).borders
            pad = (left, top)
        ref = to_bgr(apply_warp(ref, warp))
        ref_labels = ds.labels[index].copy()
        ref_labels[:, 1:] = xywhn2xyxy(ref_labels[:, 1:], ratio[0] * w, ratio[1] * h, *pad)
        ref_labels = warp_targets(ref_labels, (), warp, **ds.recipe.rendering.box_args)
        assert j == index and fast.shape == ref.shape == (96, 96, 3)
        np.testing.assert_allclose(labels, ref_labels, atol=0.5)  # labels follow the pixels, < half a pixel
        # Flat colours: pixels differ only next to colour edges (blurred once instead of twice when upsampled).
        edge = np.zeros(ref.shape[:2], np.uint8)
        edge[1:] |= (ref[1:] != ref[:-1]).any(-1)
        edge[:, 1:] |= (ref[:, 1:] != ref[:, :-1]).any(-1)
        near_edge = cv2.dilate(edge, np.ones((5, 5), np.uint8)).astype(bool)  # within 2 px
        differs = np.abs(fast.astype(int) - ref.astype(int)).max(-1) > 2
        assert not (differs & ~near_edge).any() and differs.mean() < 0.1
        _, exact, exact_labels, _ = letterboxed(two_step, index)
        np.testing.assert_array_equal(exact, ref)  # one_pass=False: YOLOv5's letterbox then warp, to the bit
        np.testing.assert_array_equal(exact_labels, ref_labels)


def test_mixup_adds_the_second_mosaic_labels(labelset):
    base = HYP0 | dict(mosaic=1.0)
    plain = make_dataset(labelset, imgsz=64, hyp=base, augment=True)
    mixed = make_dataset(labelset, imgsz=64, hyp=base | dict(mixup=1.0), augment=True)
    for index in range(4):
        a, b = plain[(index, 0)], mixed[(index, 0)]
        assert len(b[1]) > len(a[1])
        np.testing.assert_array_equal(b[1][: len(a[1])], a[1])  # first mosaic's labels, then the partner's


def test_zero_gains_give_the_letterboxed_image(labelset):
    ds = make_dataset(labelset, imgsz=128, hyp=HYP0, augment=True, albumentations=None)
    for index in range(len(ds)):
        img, labels, _, ((h0, w0), (ratio, pad)) = ds[(index, 3)]
        src = cv2.imread(labelset.im_files[index])
        r = 128 / max(h0, w0)
        src = cv2.resize(src, (int(np.ceil(w0 * r)), int(np.ceil(h0 * r))), interpolation=cv2.INTER_LINEAR)
        top, left = round(pad[1] - 0.1), round(pad[0] - 0.1)
        expected = cv2.copyMakeBorder(src, top, 128 - src.shape[0] - top, left, 128 - src.shape[1] - left,
                                      cv2.BORDER_CONSTANT, value=(114, 114, 114))  # fmt: skip
        np.testing.assert_array_equal(img.numpy(), expected.transpose(2, 0, 1)[::-1])
        lb = labelset.labels[index].copy()
        np.testing.assert_allclose(labels[:, 1].numpy(), lb[:, 0])


def test_same_seed_epoch_index_gives_same_sample(labelset):
    ds = make_dataset(labelset, imgsz=64, hyp=HYP_LOW | dict(mixup=0.5), augment=True, seed=3,
                     albumentations=[{"_target_": "albumentations.Blur", "p": 0.5}])  # fmt: skip
    again = make_dataset(labelset, imgsz=64, hyp=HYP_LOW | dict(mixup=0.5), augment=True, seed=3,
                        albumentations=[{"_target_": "albumentations.Blur", "p": 0.5}])  # fmt: skip
    for index in range(4):
        a, b = ds[(index, 2)], again[(index, 2)]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        c = ds[(index, 3)]
        assert not torch.equal(a[0], c[0])
    assert torch.equal(ds[5][0], ds[(5, 0)][0])


def test_loader_output_does_not_depend_on_workers(labelset):
    ds = make_dataset(labelset, imgsz=64, hyp=HYP_LOW, augment=True, seed=1)

    def batches(workers):
        sampler = EpochSampler(len(ds), shuffle=True, seed=1)
        sampler.set_epoch(4)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler, num_workers=workers,
                                             collate_fn=YoloDataset.collate_fn)  # fmt: skip
        return list(loader)

    for a, b in zip(batches(0), batches(2), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_close_mosaic_switches_off_from_epochs_minus_n(labelset):
    ds = make_dataset(labelset, imgsz=64, hyp=HYP0 | dict(mosaic=1.0), augment=True, epochs=10, close_mosaic=3)
    assert [ds.mosaic_active(e) for e in range(10)] == [True] * 7 + [False] * 3
    assert ds[(0, 6)][3] is None and ds[(0, 7)][3] is not None
    never = make_dataset(labelset, imgsz=64, hyp=HYP0 | dict(mosaic=1.0), augment=True, epochs=10, close_mosaic=0)
    assert all(never.mosaic_active(e) for e in range(12))
    assert not make_dataset(labelset, imgsz=64, hyp=HYP0 | dict(mosaic=1.0), augment=True, rect=True).mosaic_active(0)


def test_rect_batch_hw_formula(labelset):
    wh = np.array([[100, 50], [100, 60], [50, 100], [40, 100], [100, 100]], float)  # sorted by h/w below
    ds = make_dataset(SimpleNamespace(im_files=[f"x{i}.jpg" for i in range(5)], labels=[np.zeros((0, 5))] * 5,
                                     sizes_wh=wh, segments=None),
                     imgsz=64, batch_size=2, rect=True, pad=0.5, reader=lambda p, reduce: None)  # fmt: skip
    ar = np.sort(wh[:, 1] / wh[:, 0])  # 0.5, 0.6, 1, 2, 2.5
    expected = np.array([[ar[1], 1], [1, 1], [1, 1 / ar[4]]])  # landscape, mixed, portrait
    np.testing.assert_array_equal(ds.batch_hw, np.ceil(expected * 64 / 32 + 0.5).astype(int) * 32)
    np.testing.assert_array_equal(ds.batch_hw, [[64, 96], [96, 96], [96, 64]])
    assert [Path(f).stem for f in ds.im_files] == ["x0", "x1", "x4", "x2", "x3"]
    np.testing.assert_array_equal(rect_batch_hw(np.array([[64, 32]]), 1, 64, 32, 0.0), [[32, 64]])


def test_val_letterbox_info_maps_labels_back_to_original_pixels(labelset):
    ds = make_dataset(labelset, imgsz=96, batch_size=4, rect=True, pad=0.5, augment=False)
    batch = YoloDataset.collate_fn([ds[i] for i in range(4)])
    imgs, targets, paths, infos = batch
    assert imgs.shape[0] == 4 and (torch.tensor(imgs.shape[2:]) % 32 == 0).all()
    for i in range(4):
        t = targets[targets[:, 0] == i]
        boxes = xywhn2xyxy(t[:, 2:].clone(), imgs.shape[3], imgs.shape[2])
        native = scale_boxes(imgs.shape[2:], boxes, infos[i][0], infos[i][1])
        j = labelset.im_files.index(paths[i])
        w, h = labelset.sizes_wh[j]
        expected = xywhn2xyxy(torch.from_numpy(labelset.labels[j][:, 1:]), w, h)
        torch.testing.assert_close(native, expected.float(), atol=1.0, rtol=0)


def test_collate_writes_batch_index(labelset):
    ds = make_dataset(labelset, imgsz=64, hyp=HYP0, augment=True)
    imgs, targets, paths, infos = YoloDataset.collate_fn([ds[i] for i in range(4)])
    assert imgs.shape == (4, 3, 64, 64) and imgs.dtype == torch.uint8 and len(paths) == len(infos) == 4
    counts = [len(labelset.labels[i]) for i in range(4)]
    assert targets[:, 0].tolist() == [float(i) for i, c in enumerate(counts) for _ in range(c)]


def test_unreadable_image_is_replaced_and_logged_once(tmp_path, caplog):
    ls = make_labelset(tmp_path / "images", n=4)
    Path(ls.im_files[1]).write_bytes(b"not an image")
    ds = make_dataset(ls, imgsz=64, hyp=HYP0, augment=True)
    with caplog.at_level(logging.WARNING):
        a = ds[1]
        b = ds[1]
    assert a[2] == ls.im_files[2] and torch.equal(a[0], b[0])
    assert sum("cannot read image" in r.message for r in caplog.records) == 1


def test_mosaic_decodes_big_jpegs_reduced(tmp_path, monkeypatch):
    ls = make_labelset(tmp_path / "images", n=2)
    big = np.full((800, 1000, 3), 114, np.uint8)
    big[200:600, 250:750] = PALETTE[0]
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    ls.im_files[0], ls.sizes_wh[0] = str(tmp_path / "big.jpg"), (1000, 800)
    ls.labels[0] = np.array([[0, 0.5, 0.5, 0.5, 0.5]], np.float32)
    ds = make_dataset(ls, imgsz=64, hyp=HYP0 | dict(mosaic=1.0, translate=0.1, scale=0.5), augment=True, one_pass=True)
    seen = []
    decode = ds.images.decode
    monkeypatch.setattr(ds.images, "decode", lambda i, reduce=1: seen.append((i, reduce)) or decode(i, reduce))
    img, j, _ = ds.source.load_tile(0, 1.0)
    assert j == 0 and seen == [(0, 8)] and img.shape == (100, 125, 3)  # 1000 / 8 px still covers a 64 px tile
    img, _, _ = ds.source.load_tile(0, 2.5)  # a 160 px tile needs 1/4
    assert seen[-1] == (0, 4) and img.shape == (200, 250, 3)
    for index in range(6):  # samples stay on their pixels with the reduced decode
        im, px = pixel_labels(*ds[(index % 2, index)][:2])
        assert_on_pixels(im, px[(px[:, 3] - px[:, 1] > 4) & (px[:, 4] - px[:, 2] > 4)], tol=2.5)


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_unreadable_image_in_one_pass_paths_is_replaced(tmp_path, caplog, mosaic):
    ls = make_labelset(tmp_path / "images", n=4)
    Path(ls.im_files[1]).write_bytes(b"not an image")
    ds = make_dataset(ls, imgsz=64, hyp=HYP0 | dict(mosaic=mosaic, scale=0.5, translate=0.1), augment=True,
                      one_pass=True)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        for k in range(12):
            img, labels, path, _ = ds[(k % 4, k)]
            im, px = pixel_labels(img, labels)
            assert_on_pixels(im, px[(px[:, 3] - px[:, 1] > 4) & (px[:, 4] - px[:, 2] > 4)], tol=2.5)
            assert path != ls.im_files[1] or mosaic  # a mosaic names its first image, whoever stands in
    assert sum("cannot read image" in r.message for r in caplog.records) == 1


def test_copy_paste_warns_once_for_boxes_and_runs_with_polygons(tmp_path, caplog):
    boxes = make_labelset(tmp_path / "a" / "images", n=4)
    with caplog.at_level(logging.WARNING):
        ds = make_dataset(boxes, imgsz=64, hyp=HYP0 | dict(copy_paste=0.5, mosaic=1.0), augment=True)
        ds[0], ds[1]
    assert sum("copy_paste" in r.message for r in caplog.records) == 1
    polys = make_labelset(tmp_path / "b" / "images", n=4, polygons=True)
    hyp = HYP0 | dict(copy_paste=1.0, mosaic=1.0)
    with_cp = make_dataset(polys, imgsz=64, hyp=hyp, augment=True)
    without = make_dataset(polys, imgsz=64, hyp=hyp | dict(copy_paste=0.0), augment=True)
    assert sum(len(with_cp[i][1]) for i in range(4)) > sum(len(without[i][1]) for i in range(4))


def test_ram_and_disk_cache_give_the_same_samples(labelset, tmp_path, monkeypatch, caplog):
    plain = make_dataset(labelset, imgsz=64, hyp=HYP_LOW, augment=True)
    ram = make_dataset(labelset, imgsz=64, hyp=HYP_LOW, augment=True, cache="ram")
    disk = make_dataset(labelset, imgsz=64, hyp=HYP_LOW, augment=True, cache="disk", cache_dir=tmp_path / "npy")
    assert ram.images.ram is not None and len(list((tmp_path / "npy").glob("*.npy"))) == len(labelset.im_files)
    assert not list(Path(labelset.im_files[0]).parent.glob("*.npy"))  # nothing written into the dataset
    for i in range(3):
        # Same draws and labels (up to the sub-pixel offsets that follow the pixels); pixels differ by
        # interpolation only (a RAM-cached tile is resampled from the training size, others from the file).
        (a, la, *_), (b, lb, *_), (c, lc, *_) = plain[i], ram[i], disk[i]
        assert torch.allclose(la, lb, atol=0.5 / 64) and torch.allclose(la, lc, atol=0.5 / 64)
        assert (a.float() - b.float()).abs().mean() < 2 and (a.float() - c.float()).abs().mean() < 2
    monkeypatch.setattr(image_cache, "available_ram", lambda: 1000)
    with caplog.at_level(logging.WARNING):
        low = make_dataset(labelset, imgsz=64, hyp=HYP_LOW, augment=True, cache="ram")
    assert low.images.ram is None and "not caching" in caplog.text
    with pytest.raises(ValueError, match="cache"):
        make_dataset(labelset, imgsz=64, cache="gpu")


def test_missing_hyp_key_is_named(labelset):
    with pytest.raises(KeyError, match="fliplr"):
        make_dataset(labelset, imgsz=64, hyp={k: v for k, v in HYP0.items() if k != "fliplr"}, augment=True)


def test_threaded_batch_fetch_matches_one_by_one(labelset):
    extras = [{"_target_": "albumentations.MedianBlur", "p": 0.5}, {"_target_": "albumentations.ToGray", "p": 0.5}]
    ds = make_dataset(labelset, imgsz=64, hyp=HYP_LOW, augment=True, albumentations=extras, threads=4)
    items = [(i % len(labelset.im_files), 7) for i in range(24)]
    for _ in range(3):
        batch = ds.__getitems__(items)
        for item, (img, labels, path, _) in zip(items, batch, strict=True):
            one = ds[item]
            assert torch.equal(img, one[0]) and torch.equal(labels, one[1]) and path == one[2]


def test_resized_size_is_yolov5s_floating_point_ceil():
    # 160 / 147 * 147 is 160.00000000000003 in floating point: YOLOv5's load_image makes that side 161 px.
    assert image_cache.long_side_size(147, 139, 160) == (161, 152)
    assert image_cache.long_side_size(480, 640, 160) == (120, 160)
    im = np.zeros((147, 139, 3), np.uint8)
    assert image_cache.resize_long_side(im, 160, augment=True).shape == (161, 152, 3)


@pytest.mark.parametrize("mosaic", [1.0, 0.0])
def test_augmenting_never_writes_into_the_ram_cache(tmp_path, mosaic):
    # square images at exactly imgsz: the letterbox path then needs no resize or padding, where an in-place HSV or
    # flip on the cached array itself would change every later epoch's images
    ls = make_labelset(tmp_path, n=6)
    for f in ls.im_files:
        cv2.imwrite(f, cv2.resize(cv2.imread(f), (96, 96)))
    ls.sizes_wh[:] = 96
    ds = make_dataset(ls, imgsz=96, hyp=HYP_LOW | dict(mosaic=mosaic, translate=0.0, scale=0.0, flipud=0.5),
                      augment=True, cache="ram")  # fmt: skip
    cached = [ds.images.ram[i][0].copy() for i in range(6)]
    first = [ds[(i, 0)][0] for i in range(6)]
    for epoch in range(1, 4):
        for i in range(6):
            ds[(i, epoch)]
    assert all(np.array_equal(ds.images.ram[i][0], cached[i]) for i in range(6))
    assert all(torch.equal(ds[(i, 0)][0], first[i]) for i in range(6))  # epoch 0 comes back the same
