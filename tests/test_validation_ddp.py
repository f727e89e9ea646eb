"""Validation under DDP: each rank validates its own blocks of the val set, and the gathered metrics equal a
1-process run's on the same weights exactly (two CPU ranks, gloo). The two-rank run caches in RAM: one shared copy
(shared_ram), which validation reads to the same pixels as the uncached 1-process run."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from detector.amp_check import ASSET
from detector.data.config import load_data_config
from detector.data.shapes import ensure_shapes_dataset
from detector.data.shared_ram import SHM_DIR
from detector.train import build_datamodule, build_module
from tests.helpers import compose_train


class CountValImages(L.Callback):
    """Writes how many images each rank validated (spawned ranks share nothing with the test process)."""

    def __init__(self, out: str) -> None:
        self.out, self.images = out, 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.images += len(batch[0])

    def on_validation_end(self, trainer, pl_module) -> None:
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"images": self.images} | shared_mappings(trainer), f)


def shared_mappings(trainer) -> dict:
    """The shared image files this process maps (inode, name, deleted) and the type of the val RAM cache."""
    maps = [ln.split() for ln in Path("/proc/self/maps").read_text().splitlines() if "/detector-" in ln]
    ram = trainer.datamodule.val_dataset.images.ram
    return {"inodes": sorted({m[4] for m in maps}), "names": sorted({m[5] for m in maps}),
            "deleted": bool(maps) and all(m[-1] == "(deleted)" for m in maps), "ram": type(ram).__name__}  # fmt: skip


def validate(data_yaml, tmp_path, devices: int, cache: str = "null") -> dict[str, float]:
    cfg = compose_train([
        f"data={data_yaml}", f"run_dir={tmp_path}", "imgsz=128", "batch_size=4", "workers=0",
        "model.width_multiple=0.125", "val.coco=always", f"cache={cache}",
    ])  # fmt: skip
    data = load_data_config(cfg.data, cfg.datasets_dir)
    module = build_module(cfg, data.nc, data.names)
    state = torch.load(ASSET, weights_only=True)["state"]  # a fitted model state: real detections to score
    module.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=[CountValImages(str(tmp_path))],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    datamodule = build_datamodule(cfg, data, stride=int(module.model.stride.max()))
    return trainer.validate(module, datamodule=datamodule, verbose=False)[0]


def test_two_ranks_validate_their_own_shards_and_gather_a_one_process_result(tmp_path):
    data_yaml = ensure_shapes_dataset(tmp_path / "shapes", n_train=4, n_val=13)
    shm_before = set(SHM_DIR.glob("detector-*"))
    one = validate(data_yaml, tmp_path / "one", 1)
    two = validate(data_yaml, tmp_path / "two", 2, cache="ram")
    # the AMP check's state, fitted to other images, still finds some objects: non-zero metrics to compare
    assert one["metrics/mAP_0.5"] > 0.001 and one["metrics/recall"] > 0.01 and one["metrics/precision"] > 0.05
    for key in ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "fitness",
                "metrics/coco_mAP", "metrics/coco_mAP_0.5"):  # fmt: skip
        assert two[key] == one[key], key  # exactly: the same images, letterboxed alike, in the same order
    for key in ("val/box_loss", "val/obj_loss", "val/cls_loss"):  # means of half-size batches
        assert two[key] == pytest.approx(one[key], rel=0.05), key
    # 13 images, val batch 2 x 2 per rank: groups of 8; rank 0 gets 4 + 4, rank 1 gets 4 + 1, nobody repeats
    probes = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["images"] for p in probes] == [8, 5]
    # cache=ram: both ranks map one file of the val images (same inode), already unlinked, none left in /dev/shm
    assert [p["ram"] for p in probes] == ["SharedImages", "SharedImages"]
    assert probes[0]["inodes"] == probes[1]["inodes"] and len(probes[0]["inodes"]) == 1
    assert probes[0]["deleted"] and probes[1]["deleted"] and probes[0]["names"][0].endswith("-val.bin")
    assert set(SHM_DIR.glob("detector-*")) == shm_before
    assert json.loads((tmp_path / "one" / "rank0.json").read_text())["images"] == 13
