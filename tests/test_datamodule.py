"""DetectorDataModule, EpochSampler, multi-scale, the data pictures and the preview entry point."""

import math
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
import yaml

from detector import CONF_DIR
from detector.data.config import load_data_config
from detector.data.datamodule import DetectorDataModule
from detector.data.multiscale import multi_scale, random_size
from detector.data.sampler import BlockShardSampler, EpochSampler
from detector.plots.batches import plot_images
from detector.plots.labels import plot_labels
from detector.train import build_datamodule
from tests.helpers import TinyModule, compose_train, conf_callback

CONF = Path(CONF_DIR)


def write_dataset(root: Path, n_train: int = 10, n_val: int = 6, seed: int = 0) -> Path:
    """A YOLOv5-layout dataset of 64-160 px JPEGs with 1-3 boxes each; returns its data yaml."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            h, w = int(rng.integers(64, 161)), int(rng.integers(64, 161))
            im = np.full((h, w, 3), 60, np.uint8)
            rows = []
            for _ in range(int(rng.integers(1, 4))):
                bw, bh = int(rng.integers(10, w // 2)), int(rng.integers(10, h // 2))
                x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                im[y1 : y1 + bh, x1 : x1 + bw] = rng.integers(120, 255, 3)
                xc, yc = (x1 + bw / 2) / w, (y1 + bh / 2) / h
                rows.append(f"{int(rng.integers(3))} {xc:.6f} {yc:.6f} {bw / w:.6f} {bh / h:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i}.jpg"), im)
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(rows) + "\n")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": ["a", "b", "c"]}))  # fmt: skip
    return data


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "tiny")


def make_dm(data_yaml, tmp_path, **kw):
    """The config's datamodule (scratch-low, default augment) at 64 px, batch 4, 3 epochs; ``kw`` overrides."""
    cfg = compose_train([f"run_dir={tmp_path}", "imgsz=64", "batch_size=4", "workers=0", "epochs=3"])
    return build_datamodule(cfg, load_data_config(data_yaml, tmp_path, tmp_path), stride=32, **kw)


def test_datamodule_builds_loaders_with_the_right_shapes(data_yaml, tmp_path):
    dm = make_dm(data_yaml, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.nc == 3 and dm.names == {0: "a", 1: "b", 2: "c"} and len(dm.train_dataset) == 10
    assert (tmp_path / "dataset_train.txt").is_file() and (tmp_path / "dataset_val.txt").is_file()
    assert (data_yaml.parent / "labels" / "train.detector.cache").is_file()
    train = dm.train_dataloader()
    assert isinstance(train.sampler, EpochSampler) and train.sampler.shuffle and train.batch_size == 4
    imgs, targets, paths, infos = next(iter(train))
    assert imgs.shape == (4, 3, 64, 64) and imgs.dtype == torch.uint8
    assert targets.shape[1] == 6 and len(targets) > 0 and set(targets[:, 0].tolist()) <= {0, 1, 2, 3}
    assert len(paths) == 4 and all(s is None for s in infos)  # scratch-low: mosaic always
    val = dm.val_dataloader()
    assert val.batch_size == 6 and isinstance(val.sampler, BlockShardSampler)  # 2 x 4, capped at the 6 val images
    assert val.sampler.indices == list(range(6))  # one process: every image, in order
    vimgs, vtargets, _, vinfos = next(iter(val))
    assert vimgs.shape[0] == 6 and vimgs.shape[2] % 32 == 0 and vimgs.shape[3] % 32 == 0
    assert max(vimgs.shape[2:]) == 96  # long side 64 -> ceil(64 / 32 + 0.5) * 32
    assert all(s is not None for s in vinfos)


def test_datamodule_epoch_reaches_samples_and_single_cls(data_yaml, tmp_path):
    dm = make_dm(data_yaml, tmp_path, single_cls=True, close_mosaic=1)
    dm.setup("fit")
    assert dm.nc == 1 and dm.names == {0: "item"}
    assert all((lb[:, 0] == 0).all() for lb in dm.train_dataset.labels)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)  # the last epoch: mosaic closed
    _, _, _, infos = next(iter(loader))
    assert all(s is not None for s in infos)


def test_datamodule_rect_training_turns_shuffle_off(data_yaml, tmp_path):
    dm = make_dm(data_yaml, tmp_path, rect=True)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert not loader.sampler.shuffle and not dm.train_dataset.recipe.mosaic
    imgs, *_ = next(iter(loader))
    assert tuple(imgs.shape[2:]) == tuple(dm.train_dataset.batch_hw[0])


def test_datamodule_disk_cache_goes_beside_the_labels(data_yaml, tmp_path):
    dm = make_dm(data_yaml, tmp_path, cache="disk")
    dm.setup("fit")
    assert len(list((data_yaml.parent / "labels" / "train.npy-cache").glob("*.npy"))) == 10
    assert not list((data_yaml.parent / "images").rglob("*.npy"))


class FakeStrategy:
    """Records the collectives of one rank; broadcast returns a fixed token."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def broadcast(self, obj, src=0):
        self.calls.append("broadcast")
        return "tok"

    def barrier(self, name=None):
        self.calls.append(name)


@pytest.mark.parametrize("local_rank", [0, 1])
def test_shared_ram_cache_reaches_every_barrier_when_building_fails(data_yaml, tmp_path, local_rank, monkeypatch):
    from types import SimpleNamespace

    dm = make_dm(data_yaml, tmp_path, cache="ram")
    strategy = FakeStrategy()
    dm.trainer = SimpleNamespace(world_size=2, global_rank=local_rank, local_rank=local_rank, num_devices=2,
                                 node_rank=0, strategy=strategy)  # fmt: skip

    def broken(*args, **kwargs):
        raise RuntimeError("bad split")

    monkeypatch.setattr(dm, "_build", broken)
    with pytest.raises(RuntimeError, match="bad split"):
        dm.setup("fit")  # a rank that raised before the barriers would leave the others waiting for hours
    assert strategy.calls == ["broadcast", "shared_ram_written", "shared_ram_mapped"]


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (7, 3)])
def test_sampler_shards_cover_all_indices(n, world):
    for shuffle in (True, False):
        shards = []
        for rank in range(world):
            s = EpochSampler(n, shuffle=shuffle, seed=5, rank=rank, world_size=world)
            s.set_epoch(3)
            items = list(s)
            assert len(items) == len(s) == math.ceil(n / world)
            assert all(e == 3 for _, e in items)
            shards.append([i for i, _ in items])
        assert set().union(*shards) == set(range(n))
        assert sum(map(len, shards)) == math.ceil(n / world) * world


def test_sampler_shuffles_per_epoch_and_pads_rect_with_last():
    s = EpochSampler(20, shuffle=True, seed=0)
    first = [i for i, _ in s]
    s.set_epoch(1)
    assert sorted(first) == list(range(20)) and [i for i, _ in s] != first
    s.set_epoch(0)
    assert [i for i, _ in s] == first
    # seeds are independent: seed 1's first epoch is not seed 0's second (it would be with seed + epoch)
    second = EpochSampler(20, shuffle=True, seed=0, epoch=1)
    assert [i for i, _ in EpochSampler(20, shuffle=True, seed=1)] != [i for i, _ in second]
    tail = [list(EpochSampler(5, shuffle=False, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert [t[-1][0] for t in tail] == [3, 4, 4]
    with pytest.raises(ValueError):
        EpochSampler(5, shuffle=True, seed=0, rank=2, world_size=2)


def test_multi_scale_sizes_and_dtype():
    g = torch.Generator().manual_seed(0)
    sizes = {random_size(640, 32, g) for _ in range(300)}
    assert min(sizes) >= 320 and max(sizes) <= 960 and all(s % 32 == 0 for s in sizes) and len(sizes) > 15
    imgs = torch.rand(2, 3, 64, 96)
    for _ in range(10):
        out = multi_scale(imgs, 64, 32, torch.Generator().manual_seed(_))
        assert out.shape[:2] == (2, 3) and out.shape[2] % 32 == 0 and out.shape[3] % 32 == 0
    u8 = multi_scale((imgs * 255).to(torch.uint8), 64, 32, np.random.default_rng(1))
    assert u8.dtype == torch.uint8
    a = multi_scale(imgs, 640, 32, torch.Generator().manual_seed(3))
    b = multi_scale(imgs, 640, 32, torch.Generator().manual_seed(3))
    assert a.shape == b.shape


def test_plots_write_pictures(tmp_path):
    imgs = torch.randint(0, 255, (5, 3, 64, 80), dtype=torch.uint8)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.3], [3, 0, 0.2, 0.3, 0.1, 0.1]])
    path = plot_images(imgs, targets, [f"im{i}.jpg" for i in range(5)], {0: "a", 1: "b"}, tmp_path / "b.jpg")
    im = cv2.imread(str(path))
    assert im.shape == (3 * 64, 3 * 80, 3)
    preds = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.3, 0.9]])
    assert cv2.imread(str(plot_images(imgs.float() / 255, preds, None, None, tmp_path / "p.jpg"))) is not None
    labels = np.array([[0, 0.5, 0.5, 0.2, 0.3], [1, 0.2, 0.3, 0.1, 0.1], [1, 0.7, 0.3, 0.3, 0.1]])
    out = plot_labels(labels, {0: "a", 1: "b"}, tmp_path)
    assert out == tmp_path / "labels.jpg" and cv2.imread(str(out)).shape[0] > 500


def test_dataset_plots_callback_saves_labels_and_first_batches(data_yaml, tmp_path, monkeypatch):
    import detector.callbacks.dataset_plots as dp

    calls = []
    monkeypatch.setattr(dp, "plot_images", lambda *a, **k: calls.append(a[-1]) or plot_images(*a, **k))
    dm = make_dm(data_yaml, tmp_path / "dm", batch_size=2)
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[conf_callback("dataset_plots", save_dir=tmp_path / "run")],
    )
    trainer.fit(TinyModule(), datamodule=dm)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["labels.jpg", "train_batch0.jpg", "train_batch1.jpg", "train_batch2.jpg"]
    assert len(calls) == 3  # first epoch only


def test_preview_writes_pictures_and_reports(data_yaml, tmp_path):
    from hydra import compose, initialize_config_dir

    from detector.preview import preview

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={data_yaml}", "imgsz=64", "batch_size=4", "workers=0"])
    paths = preview(cfg, tmp_path, str(tmp_path))
    assert sorted(p.name for p in paths) == sorted(
        [
            "labels.jpg",
            "train_batch0.jpg",
            "train_batch1.jpg",
            "train_batch2.jpg",
            "dataset_train.txt",
            "dataset_val.txt",
        ]  # fmt: skip
    )
    assert all(p.is_file() for p in paths)


def test_batch_size_must_divide_by_the_devices(data_yaml, tmp_path, monkeypatch):
    dm = make_dm(data_yaml, tmp_path, batch_size=6)
    monkeypatch.setattr(DetectorDataModule, "_world", lambda self: (4, 0, 4))
    with pytest.raises(ValueError, match="batch_size=6 does not divide by the 4 devices"):
        dm.setup("fit")
    dm = make_dm(data_yaml, tmp_path, batch_size=8)
    dm.setup("fit")
    assert dm._train_batch == 2


def test_prepare_data_keeps_no_state_and_setup_reloads_quietly(data_yaml, tmp_path, caplog):
    import logging

    dm = make_dm(data_yaml, tmp_path)
    with caplog.at_level(logging.INFO, logger="detector.data.labels"):
        dm.prepare_data()
        assert dm._labelsets == {} and dm.train_dataset is None
        reports = len([r for r in caplog.records if "images" in r.getMessage()])
        assert reports >= 2  # train and val summaries
        dm.setup("fit")
        assert len([r for r in caplog.records if "images" in r.getMessage()]) == reports  # no second report
    assert len(dm.train_dataset) == 10


def test_a_small_val_set_gives_every_rank_a_batch(data_yaml, tmp_path):
    dm = make_dm(data_yaml, tmp_path)
    dm.setup("fit")  # one process: val batch 8 (2 x 4), all 6 images in one rect group
    assert set(dm.val_dataset.batch_index.tolist()) == {0}
    shards = []
    for rank in range(4):  # 4 ranks: per-rank blocks of 8 / 4 = 2 would leave rank 3 nothing; blocks of 1 do not
        dm._world = lambda rank=rank: (4, rank, 4)
        val = dm.val_dataloader()
        assert val.batch_size == 1 and len(val.sampler) >= 1
        shards.append(val.sampler.indices)
    assert shards == [[0, 4], [1, 5], [2], [3]]
    dm._world = lambda: (7, 0, 7)
    with pytest.raises(ValueError, match="6 images for 7 processes"):
        dm.val_dataloader()


@pytest.mark.parametrize("n,batch,world", [(10, 2, 2), (11, 3, 2), (7, 2, 3), (3, 4, 2), (16, 4, 4)])
def test_block_shards_cover_every_image_once_in_whole_batches(n, batch, world):
    shards = [BlockShardSampler(n, batch=batch, rank=r, world_size=world) for r in range(world)]
    every = sorted(i for s in shards for i, _ in s)
    assert every == list(range(n))  # no repeats, no padding
    for r, s in enumerate(shards):
        for k in range(0, len(s), batch):  # each rank's k-th batch lies in group k of batch * world images
            block = s.indices[k : k + batch]
            group = k // batch
            assert all(group * batch * world <= i < (group + 1) * batch * world for i in block)
            assert block[0] == group * batch * world + r * batch
    # sorting by (batch index, rank, position) restores the dataset order
    keyed = [((k // batch, r, k % batch), i) for r, s in enumerate(shards) for k, i in enumerate(s.indices)]
    assert [i for _, i in sorted(keyed)] == list(range(n))
