"""Augmentation primitives: boxes stay on their pixels, zero gains change nothing, YOLOv5's formulas hold."""

import cv2
import numpy as np
import pytest

from detector.data.albumentations_extras import AlbumentationsExtras
from detector.data.augment import copy_paste, flip_lr, flip_ud, mixup
from detector.data.geometry import apply_warp, box_candidates, draw_warp, source_roi, warp_targets
from detector.data.letterbox import letterbox
from detector.data.mosaic import mosaic4, mosaic4_warped, mosaic9
from detector.data.photometric import augment_hsv, to_bgr
from tests.helpers import PALETTE

BG = (114, 114, 114)


def scene(h, w, rects):
    """Grey image with filled rectangles; rects are (cls, x1, y1, x2, y2) pixels (x2, y2 exclusive)."""
    im = np.full((h, w, 3), BG, np.uint8)
    for c, x1, y1, x2, y2 in rects:
        im[y1:y2, x1:x2] = PALETTE[c]
    return im, np.array(rects, np.float32).reshape(-1, 5)


def colour_box(im, c, region=None, tol=60):
    """Bounding box (x1, y1, x2, y2 exclusive) of the pixels of colour c, optionally inside region."""
    ox = oy = 0
    if region is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in region)
        x1, y1 = max(x1 - 3, 0), max(y1 - 3, 0)
        im, ox, oy = im[y1 : y2 + 3, x1 : x2 + 3], x1, y1
    mask = (np.abs(im[..., :3].astype(int) - PALETTE[c]).max(-1) < tol).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    if n < 2:
        return None
    j = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # the instance itself, not stray edge pixels
    x, y, w, h = stats[j, :4]
    return np.array([x + ox, y + oy, x + ox + w, y + oy + h], float)


def assert_boxes_on_pixels(im, labels, tol=2.0):
    """Every pixel-xyxy label bounds the largest blob of its class colour around it, within tol px."""
    assert len(labels)
    for c, *box in labels:
        found = colour_box(im, int(c), box)
        assert found is not None, f"no pixels of class {int(c)} near {box}"
        np.testing.assert_allclose(found, box, atol=tol, err_msg=f"class {int(c)}")


RECTS = [(0, 10, 12, 40, 30), (1, 60, 40, 90, 75), (2, 20, 50, 45, 70)]


YOLOV5_BOXES = dict(wh_thr=2, ar_thr=100, area_thr=0.1, area_thr_segments=0.01)  # YOLOv5's box-candidate thresholds


def warp_gains(degrees: float = 0.0, shear: float = 0.0, **kw: float) -> dict[str, float]:
    """draw_warp's gains: hyp scratch-low's translate and scale, no perspective, the given degrees and shear."""
    return dict(degrees=degrees, translate=0.1, scale=0.5, shear=shear, perspective=0.0) | kw


def random_perspective(
    im: np.ndarray,
    targets: np.ndarray,
    border: tuple[int, int] = (0, 0),
    rng: np.random.Generator | None = None,
    **gains: float,
) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv5's random_perspective composed from our three steps (``gains``: degrees, translate, scale, shear,
    perspective, as ``draw_warp`` takes them); returns (image, kept targets) under YOLOv5's box thresholds.

    Output size is the input size plus ``2 * border`` (h, w), with the input's channels (BGR or BGRA). The image
    is left as it is when the border is 0 and M is the identity.
    """
    rng = rng if rng is not None else np.random.default_rng()
    warp = draw_warp(im.shape[:2], rng, border=border, **warp_gains(**gains))
    if border[0] or border[1] or (warp.M != np.eye(3)).any():
        im = apply_warp(im, warp)
    return im, warp_targets(targets, (), warp, **YOLOV5_BOXES, pixel_centres=False)


def test_letterbox_keeps_boxes_on_pixels_and_pads_symmetrically():
    im, lb = scene(80, 100, RECTS)
    out, (rw, rh), (dw, dh) = letterbox(im, 128, auto=False)
    assert out.shape == (128, 128, 3)
    assert rw == rh == pytest.approx(1.28)
    assert (dw, dh) == (0, pytest.approx((128 - round(80 * 1.28)) / 2))
    boxes = lb.copy()
    boxes[:, [1, 3]] = lb[:, [1, 3]] * rw + dw
    boxes[:, [2, 4]] = lb[:, [2, 4]] * rh + dh
    assert_boxes_on_pixels(out, boxes)
    assert (out[: int(dh) - 1] == 114).all() and (out[-int(dh) + 1 :] == 114).all()


def test_letterbox_no_scaleup_and_rect_shape():
    im, _ = scene(50, 60, [])
    out, ratio, pad = letterbox(im, (64, 96), auto=False, scaleup=False)
    assert out.shape[:2] == (64, 96) and ratio == (1.0, 1.0) and pad == (18.0, 7.0)
    assert letterbox(im, 64, auto=True, stride=32)[0].shape[:2] == (64, 64)


@pytest.mark.parametrize(
    "kw",
    [
        dict(degrees=30),
        dict(shear=15),
        dict(scale=0.5),
        dict(translate=0.2),
        dict(perspective=0.0008),
        dict(degrees=10, translate=0.1, scale=0.3, shear=5),
    ],
)
def test_random_perspective_keeps_boxes_on_pixels(kw):
    im, lb = scene(128, 128, [(0, 30, 30, 60, 55), (1, 70, 64, 100, 100), (3, 40, 80, 60, 110)])
    args = dict(degrees=0.0, translate=0.0, scale=0.0, shear=0.0, perspective=0.0) | kw
    for seed in range(6):
        out, new = random_perspective(im, lb.copy(), rng=np.random.default_rng(seed), **args)
        assert out.shape == im.shape
        if len(new):
            assert_boxes_on_pixels(out, new, tol=2.5)


def test_random_perspective_zero_gains_is_identity():
    im, lb = scene(96, 128, RECTS)
    zero = dict(degrees=0, translate=0, scale=0, shear=0, perspective=0)
    out, new = random_perspective(im, lb.copy(), rng=np.random.default_rng(0), **zero)
    assert out is im
    np.testing.assert_array_equal(new, lb)


def test_random_perspective_border_crops_to_centre():
    im, lb = scene(128, 128, [(0, 40, 40, 60, 60)])
    zero = dict(degrees=0, translate=0, scale=0, shear=0, perspective=0)
    out, new = random_perspective(im, lb.copy(), border=(-32, -32), rng=np.random.default_rng(0), **zero)
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(new[0, 1:], [8, 8, 28, 28])
    np.testing.assert_array_equal(out, im[32:96, 32:96])


def test_random_perspective_bgra_matches_bgr():
    im, lb = scene(96, 96, RECTS)
    args = dict(degrees=12, translate=0.1, scale=0.4, shear=3, perspective=0.0)
    a, la = random_perspective(im, lb.copy(), rng=np.random.default_rng(3), **args)
    b, lb4 = random_perspective(cv2.cvtColor(im, cv2.COLOR_BGR2BGRA), lb.copy(), rng=np.random.default_rng(3), **args)
    assert b.shape[2] == 4
    np.testing.assert_array_equal(a, to_bgr(b))
    np.testing.assert_array_equal(la, lb4)


def test_box_candidates_thresholds():
    before = np.array([[0, 0, 10, 10]] * 5, float).T
    after = np.array(
        [
            [0, 0, 10, 10],  # unchanged: kept
            [0, 0, 2, 10],  # width 2 px (not > wh_thr): dropped
            [0, 0, 3, 3],  # area ratio 0.09 (< 0.1): dropped
            [0, 0, 3.5, 3.5],  # area ratio 0.1225: kept
            [0, 0, 300, 2.9],  # aspect ratio 103 (>= 100): dropped
        ],
        float,
    ).T
    yolov5 = dict(wh_thr=2, ar_thr=100, area_thr=0.1)  # YOLOv5's thresholds
    np.testing.assert_array_equal(box_candidates(before, after, **yolov5), [True, False, False, True, False])
    assert box_candidates(before, after, **yolov5 | dict(area_thr=0.01))[2]
    assert box_candidates(before, after, **yolov5 | dict(ar_thr=200))[4]
    assert not box_candidates(before, after, **yolov5 | dict(wh_thr=3))[4]


def test_random_perspective_drops_boxes_that_shrink():
    im, lb = scene(128, 128, [(0, 30, 30, 60, 60), (1, 100, 100, 128, 128)])
    args = dict(degrees=0, translate=0, scale=0, shear=0, perspective=0)
    # crop the centre: the corner box keeps a 4x4 px sliver (area 1.6% < 10%) and is dropped
    _, new = random_perspective(im, lb.copy(), border=(-24, -24), rng=np.random.default_rng(0), **args)
    assert new[:, 0].tolist() == [0]


def test_augment_hsv_zero_gains_and_multiplicative_hue():
    im, _ = scene(32, 32, RECTS)
    assert augment_hsv(im, 0, 0, 0, np.random.default_rng(0)) is im
    rng = np.random.default_rng(5)
    out = augment_hsv(im, 0.5, 0.0, 0.0, rng)
    r0 = np.random.default_rng(5).uniform(-1, 1, 3)[0] * 0.5 + 1
    h_in = cv2.cvtColor(im, cv2.COLOR_BGR2HSV)[..., 0].astype(float)
    h_out = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)[..., 0].astype(float)
    coloured = cv2.cvtColor(im, cv2.COLOR_BGR2HSV)[..., 1] > 0
    np.testing.assert_allclose(h_out[coloured], np.floor((h_in[coloured] * r0) % 180), atol=1)
    np.testing.assert_array_equal(out.max(-1), im.max(-1))  # value unchanged with vgain 0
    bgra = augment_hsv(cv2.cvtColor(im, cv2.COLOR_BGR2BGRA), 0.5, 0, 0, np.random.default_rng(5))
    np.testing.assert_array_equal(bgra, out)
    mine = im.copy()
    same = augment_hsv(mine, 0.5, 0.0, 0.0, np.random.default_rng(5), inplace=True)
    assert np.shares_memory(same, mine)
    np.testing.assert_array_equal(same, out)


def test_flips_move_boxes_with_pixels():
    h, w = 80, 96
    im, lb = scene(h, w, RECTS)
    xywhn = lb.copy()
    xywhn[:, 1:] = np.c_[(lb[:, 1] + lb[:, 3]) / 2 / w, (lb[:, 2] + lb[:, 4]) / 2 / h,
                         (lb[:, 3] - lb[:, 1]) / w, (lb[:, 4] - lb[:, 2]) / h]  # fmt: skip
    for flip in (flip_lr, flip_ud):
        out, new = flip(im, xywhn.copy())
        px = new.copy()
        px[:, 1:] = np.c_[(new[:, 1] - new[:, 3] / 2) * w, (new[:, 2] - new[:, 4] / 2) * h,
                          (new[:, 1] + new[:, 3] / 2) * w, (new[:, 2] + new[:, 4] / 2) * h]  # fmt: skip
        assert_boxes_on_pixels(out, px, tol=1e-3)


def test_mixup_blends_and_concatenates():
    a, la = scene(32, 32, [(0, 2, 2, 10, 10)])
    b, lb = scene(32, 32, [(1, 20, 20, 30, 30)])
    out, labels = mixup(a, la, b, lb, np.random.default_rng(1), beta=32.0)
    r = np.random.default_rng(1).beta(32.0, 32.0)
    np.testing.assert_array_equal(out, (a * r + b * (1 - r)).astype(np.uint8))
    np.testing.assert_array_equal(labels, np.concatenate([la, lb]))
    assert 0.3 < r < 0.7


def test_copy_paste_mirrors_instances_and_their_pixels():
    im, lb = scene(64, 64, [(0, 4, 10, 20, 30), (1, 24, 40, 40, 56)])  # the second straddles the centre
    segs = [np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], float) for _, x1, y1, x2, y2 in lb]
    out, labels, new_segs = copy_paste(im, lb, segs, p=1.0, rng=np.random.default_rng(0))
    assert len(labels) == 3 and len(new_segs) == 3  # the centred one overlaps its mirror and is rejected
    np.testing.assert_allclose(labels[2], [0, 44, 10, 60, 30])
    assert_boxes_on_pixels(out, labels, tol=1.01)
    same, same_labels, _ = copy_paste(im, lb, segs, p=0.0, rng=np.random.default_rng(0))
    assert same is im and same_labels is lb


def test_mosaic4_places_images_with_their_labels():
    rng = np.random.default_rng(0)
    images = []
    for i in range(5):
        h, w = int(rng.integers(40, 65)), int(rng.integers(40, 65))
        x1, y1 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        im, px = scene(h, w, [(i % len(PALETTE), x1, y1, x1 + 15, y1 + 15)])
        n = px.copy()
        n[:, 1:] = [[(x1 + 7.5) / w, (y1 + 7.5) / h, 15 / w, 15 / h]]
        images.append((im, n, []))
    for seed in range(4):
        canvas, labels, _ = mosaic4(lambda i: images[i], 0, len(images), 64, np.random.default_rng(seed))
        assert canvas.shape == (128, 128, 4) and len(labels) == 4
        visible = labels[(labels[:, 3] - labels[:, 1] > 3) & (labels[:, 4] - labels[:, 2] > 3)]
        assert_boxes_on_pixels(canvas, visible, tol=0.01)
        canvas9, labels9, _ = mosaic9(lambda i: images[i], 0, len(images), 64, np.random.default_rng(seed))
        assert canvas9.shape == (128, 128, 4) and len(labels9) == 9
        keep = (labels9[:, 3] - labels9[:, 1] > 3) & (labels9[:, 4] - labels9[:, 2] > 3)
        assert_boxes_on_pixels(canvas9, labels9[keep], tol=0.01)


def test_albumentations_extras_seeded_filtered_and_box_aware():
    im, _ = scene(48, 48, RECTS)
    extras = AlbumentationsExtras(
        [{"_target_": "albumentations.Blur", "p": 1.0}, {"_target_": "albumentations.ToGray", "p": 0.0}]
    )
    assert [type(t).__name__ for t in extras.transforms] == ["Blur"] and extras.compose is None
    a, _ = extras(im, np.zeros((0, 5)), np.random.default_rng(7))
    b, _ = extras(im, np.zeros((0, 5)), np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, im)
    assert not AlbumentationsExtras([{"_target_": "albumentations.Blur", "p": 0.0}])
    flip = AlbumentationsExtras([{"_target_": "albumentations.HorizontalFlip", "p": 1.0}])
    assert flip.compose is not None
    out, labels = flip(im, np.array([[2, 0.25, 0.5, 0.2, 0.4]], np.float32), np.random.default_rng(0))
    np.testing.assert_allclose(labels, [[2, 0.75, 0.5, 0.2, 0.4]], atol=1e-6)
    np.testing.assert_array_equal(out, im[:, ::-1])
    with pytest.raises(ValueError, match="_target_"):
        AlbumentationsExtras([{"p": 0.5}])


def test_mosaic_built_only_where_the_warp_reads_gives_identical_pixels():
    rng = np.random.default_rng(1)
    images = []
    for i in range(5):
        h, w = int(rng.integers(30, 65)), int(rng.integers(30, 65))
        im = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        images.append((im, np.array([[i, 0.5, 0.5, 0.4, 0.4]], np.float32), []))
    areas = []
    for seed in range(8):
        warp = draw_warp((128, 128), np.random.default_rng(seed), **warp_gains(10, 2), border=(-32, -32))
        full, labels_full, _ = mosaic4(lambda i: images[i], 0, 5, 64, np.random.default_rng(seed + 50))
        roi = source_roi(warp, (128, 128))
        part, labels_part, _ = mosaic4(lambda i: images[i], 0, 5, 64, np.random.default_rng(seed + 50), roi)
        assert part.shape == full.shape
        areas.append((roi[2] - roi[0]) * (roi[3] - roi[1]))
        part[: roi[1]], part[roi[3] :], part[:, : roi[0]], part[:, roi[2] :] = 0, 255, 0, 255  # never read
        np.testing.assert_array_equal(apply_warp(part, warp), apply_warp(full, warp))
        np.testing.assert_array_equal(labels_part, labels_full)
    assert min(areas) < 0.5 * 128 * 128  # most of the canvas is skipped for zoomed-in warps


def _flat_tiles(n, lo, hi, seed=3):
    """n flat-colour images (sizes lo..hi) with one centred label each, as (image, labels, polygons)."""
    rng = np.random.default_rng(seed)
    tiles = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
        im = np.full((h, w, 3), PALETTE[i % len(PALETTE)], np.uint8)
        tiles.append((im, np.array([[i, 0.5, 0.5, 0.5, 0.5]], np.float32), []))
    return tiles


def _edge_band(im):
    """Pixels within 1 px of a colour change."""
    d = np.zeros(im.shape[:2], bool)
    dy, dx = (im[1:] != im[:-1]).any(-1), (im[:, 1:] != im[:, :-1]).any(-1)
    d[1:] |= dy
    d[:-1] |= dy
    d[:, 1:] |= dx
    d[:, :-1] |= dx
    return d


@pytest.mark.parametrize("s", [64, 160])
def test_mosaic4_warped_matches_the_two_step_mosaic(s):
    from detector.data.image_cache import long_side_size, resize_long_side

    tiles = _flat_tiles(6, s // 3, 3 * s)  # up- and down-sampled tiles, some shrunk more than 2x
    info = [(long_side_size(*im.shape[:2], s), lab, segs) for im, lab, segs in tiles]
    for seed in range(40):
        warp = draw_warp((2 * s, 2 * s), np.random.default_rng(seed), **warp_gains(0, 0), border=(-(s // 2), -(s // 2)))
        assert warp.axis_aligned
        canvas, labels, _ = mosaic4(lambda i: (resize_long_side(tiles[i][0], s, True), *tiles[i][1:]), 0, 6, s,
                                    np.random.default_rng(seed + 9))  # fmt: skip
        ref = to_bgr(apply_warp(canvas, warp))
        out, labels2, _ = mosaic4_warped(info.__getitem__, lambda i, zoom: (tiles[i][0], i, None), 0, 6, s,
                                         np.random.default_rng(seed + 9), warp)  # fmt: skip
        assert out.shape == (s, s, 3) and out.dtype == np.uint8
        # Same draws and layout; labels move with their tile's pixels, under half an output pixel.
        np.testing.assert_array_equal(labels2[:, 0], labels[:, 0])
        assert np.abs(labels2[:, 1:] - labels[:, 1:]).max() <= 0.5 / warp.scale + 1e-4
        differs = np.abs(out.astype(int) - ref.astype(int)).max(-1) > 2
        assert not (differs & ~_edge_band(ref)).any()  # tiles land on the same pixels, edges within 1 px
    rotated = draw_warp((2 * s, 2 * s), np.random.default_rng(0), **warp_gains(10, 0), border=(-(s // 2), -(s // 2)))
    with pytest.raises(ValueError, match="rotation"):
        mosaic4_warped(
            info.__getitem__, lambda i, zoom: (tiles[i][0], i, None), 0, 6, s, np.random.default_rng(0), rotated
        )


def test_mosaic4_warped_decodes_only_tiles_it_shows_at_the_size_it_needs():
    s = 64
    tiles = _flat_tiles(5, 200, 256)
    info = [((s, s), lab, segs) for _, lab, segs in tiles]
    zooms, skipped = [], 0
    for seed in range(60):
        warp = draw_warp((2 * s, 2 * s), np.random.default_rng(seed), **warp_gains(0, 0), border=(-(s // 2), -(s // 2)))
        calls = []

        def load(i, zoom, calls=calls):
            calls.append(i)
            zooms.append(zoom)
            return cv2.resize(tiles[i][0], (s, s)), i, None

        out, labels, _ = mosaic4_warped(info.__getitem__, load, 0, 5, s, np.random.default_rng(seed), warp)
        assert set(zooms[len(zooms) - len(calls) :]) <= {warp.M[0, 0]}  # the zoom asked for is the warp's scale
        shown = {i for i in range(5) if (np.abs(out.astype(int) - PALETTE[i]).max(-1) < 3).any()}
        assert shown <= set(calls)
        skipped += 4 - len(calls)
        assert len(labels) == 4  # every tile's labels, shown or not (the warp's box filter drops unseen ones)
    assert skipped > 0 and 0.5 <= min(zooms) < max(zooms) <= 1.5


@pytest.mark.parametrize("s", [0.5, 1.5])
def test_pixel_centre_labels_follow_opencv_warps(s):
    """OpenCV maps pixel centres: a warp x -> s x + t shows source edge X at s X + t + 0.5 (1 - s)."""
    from detector.data.geometry import Warp, warp_targets

    M = np.array([[s, 0, 7.0], [0, s, 3.0], [0, 0, 1]])
    warp = Warp(M, s, (200, 200), False)
    targets = np.array([[0, 20.0, 30.0, 60.0, 90.0]])
    boxes = YOLOV5_BOXES
    yolov5 = warp_targets(targets.copy(), (), warp, **boxes, pixel_centres=False)
    exact = warp_targets(targets.copy(), (), warp, **boxes, pixel_centres=True)
    np.testing.assert_allclose(yolov5[0, 1:], [s * 20 + 7, s * 30 + 3, s * 60 + 7, s * 90 + 3])
    np.testing.assert_allclose(exact[0, 1:], yolov5[0, 1:] + 0.5 * (1 - s))
    if s < 1:
        return  # a shrunk step edge is sampled, not interpolated: its crossing cannot show the sub-pixel position
    # and the pixels agree: a step edge at X = 40 lands where the pixel-centre labels say
    im = np.zeros((120, 120, 3), np.uint8)
    im[:, 40:] = 255
    out = cv2.warpAffine(im, M[:2], (200, 200))
    row = out[50, :, 0].astype(float) / 255
    i = int(np.argmax(row >= 0.5))
    edge = i - 0.5 + (0.5 - row[i - 1]) / (row[i] - row[i - 1])  # 50 % crossing, pixel centres at i + 0.5
    assert abs(edge - (s * 40 + 7 + 0.5 * (1 - s))) < 0.05
