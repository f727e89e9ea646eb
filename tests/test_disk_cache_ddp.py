"""cache=disk under DDP: the node's local rank 0 writes every .npy file once in prepare_data, the other ranks only
read them (two CPU ranks, gloo, ddp_spawn); each write goes through a temporary name of its own."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
from hydra.utils import instantiate

from detector.data import image_cache
from detector.data.config import load_data_config
from detector.data.datamodule import DetectorDataModule
from detector.data.shapes import ensure_shapes_dataset
from tests.helpers import TinyModule, compose_train

SAVE_NPY = image_cache._save_npy  # the real writer, before any test wraps it


class WriteLog(DetectorDataModule):
    """A datamodule whose .npy writes append ``hook rank pid file`` lines to ``log_path`` (spawned ranks share
    nothing with the test process but the file system)."""

    def __init__(self, log_path: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log_path = log_path

    def prepare_data(self) -> None:
        self._log_writes("prepare_data")
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self._log_writes("setup")
        super().setup(stage)

    def _log_writes(self, hook: str) -> None:
        rank = self.trainer.global_rank if self.trainer is not None else 0

        def save(path: Path, im: np.ndarray) -> None:
            SAVE_NPY(path, im)
            with open(self.log_path, "a") as f:
                f.write(f"{hook} {rank} {os.getpid()} {path.name}\n")

        image_cache._save_npy = save


def write_log_datamodule(tmp_path: Path, log_path: Path) -> WriteLog:
    data_yaml = ensure_shapes_dataset(tmp_path / "shapes", n_train=8, n_val=4)
    cfg = compose_train([f"run_dir={tmp_path}", "imgsz=64", "batch_size=4", "workers=0", "epochs=1", "cache=disk"])
    data = load_data_config(data_yaml, tmp_path, tmp_path)
    kwargs = instantiate(cfg.datamodule, _partial_=True, _recursive_=False, _convert_="all").keywords
    return WriteLog(str(log_path), data=data, stride=32, **kwargs)


def test_two_ranks_write_each_npy_file_once_from_local_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(image_cache, "_save_npy", SAVE_NPY)  # put back after the test, should this process wrap it
    log_path = tmp_path / "writes.log"
    dm = write_log_datamodule(tmp_path, log_path)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyModule(), datamodule=dm)
    writes = [line.split() for line in log_path.read_text().splitlines()]
    files = sorted(p.name for p in (tmp_path / "shapes").rglob("*.npy-cache/*.npy"))
    assert len(files) == 12  # 8 train + 4 val images
    assert sorted(w[3] for w in writes) == files  # every file written, none twice
    assert {(w[0], w[1]) for w in writes} == {("prepare_data", "0")}  # by local rank 0, before setup
    assert len({w[2] for w in writes}) == 1  # one process
    assert not list((tmp_path / "shapes").rglob("*.tmp"))


def test_setup_after_prepare_data_writes_nothing_and_temp_names_are_per_process(tmp_path, monkeypatch):
    log_path = tmp_path / "writes.log"
    dm = write_log_datamodule(tmp_path, log_path)
    monkeypatch.setattr(image_cache, "_save_npy", SAVE_NPY)  # put back after the test: the datamodule wraps it
    temps: list[str] = []
    real_replace = os.replace

    def replace(src, dst) -> None:
        if str(dst).endswith(".npy"):
            temps.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    dm.prepare_data()
    dm.setup("fit")
    writes = [line.split() for line in log_path.read_text().splitlines()]
    assert len(writes) == 12 and {w[0] for w in writes} == {"prepare_data"}
    assert len(temps) == 12 and len(set(temps)) == 12
    assert all(f".{os.getpid()}-" in name and name.endswith(".tmp") for name in temps)
    assert dm.train_dataset.images.npy is not None and all(p.is_file() for p in dm.train_dataset.images.npy)
    assert np.array_equal(dm.val_dataset.images.decode(0), np.load(dm.val_dataset.images.npy[0]))
