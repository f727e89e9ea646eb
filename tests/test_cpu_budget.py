"""Defaults for a GPU machine: loader workers by YOLOv5's rule per rank, threads within the rank's CPUs, one device
unless asked, and ddp_timeout on every way of getting DDP."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import DDPStrategy

from detector.data import cpu_budget
from detector.data.cpu_budget import loader_workers, rank_cpus, threads_per_loader, usable_cpus
from detector.run_config import ConfigError, prepare_config
from detector.train import resolve_strategy
from tests.helpers import compose_train
from tests.test_datamodule import data_yaml, make_dm  # noqa: F401 (fixture)


@pytest.mark.parametrize(
    ("setting", "batch", "cpus", "scale", "expected"),
    [
        ("auto", 16, 16, 1, 8),  # YOLOv5's default cap of 8
        ("auto", 16, 2, 1, 2),  # this machine: 2 CPUs
        ("auto", 4, 16, 1, 4),  # no more workers than images in a batch
        ("auto", 1, 16, 1, 0),  # batch 1: the main process loads
        ("auto", 32, 32, 2, 16),  # validation: twice the cap (YOLOv5's val loader)
        (3, 16, 16, 1, 3),  # a number replaces the cap
        (12, 16, 4, 1, 4),  # ... within the rank's CPUs
        (0, 16, 16, 2, 0),  # workers=0: the main process
    ],
)
def test_loader_workers_follow_yolov5s_rule(setting, batch, cpus, scale, expected):
    assert loader_workers(setting, batch, cpus, scale) == expected


def test_ranks_on_one_machine_split_its_cpus_and_threads_stay_within_a_ranks_share():
    assert rank_cpus(8, cpus=64) == 8 and rank_cpus(4, cpus=6) == 1 and rank_cpus(3, cpus=2) == 1
    for cpus in (1, 2, 7, 16):
        for workers in range(0, 9):
            threads = threads_per_loader(cpus, workers)
            assert threads >= 1 and (threads * workers <= cpus or threads == 1), (cpus, workers)


def test_usable_cpus_reads_the_affinity_and_the_cgroup_quota(tmp_path):
    affinity = usable_cpus(tmp_path / "none")  # no cgroup files: the affinity mask
    assert affinity >= 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a container limited to 1.5 CPUs
    assert usable_cpus(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == affinity
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(v1) == 1


def attach(dm, devices: int) -> None:
    """A stand-in for the Trainer the datamodule reads its world from: rank 0 of ``devices`` ranks on one machine."""
    dm.trainer = SimpleNamespace(world_size=devices, global_rank=0, num_devices=devices, local_rank=0,
                                 fit_loop=SimpleNamespace(epoch_progress=SimpleNamespace(
                                     current=SimpleNamespace(processed=0))))  # fmt: skip


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 16 CPUs simulated on this machine
@pytest.mark.parametrize(("devices", "train_workers", "val_workers", "rank_share"), [(1, 8, 16, 16), (4, 4, 4, 4)])
def test_default_workers_per_rank_on_a_16_cpu_machine(data_yaml, tmp_path, monkeypatch, devices, train_workers,  # noqa: F811
                                                      val_workers, rank_share):  # fmt: skip
    monkeypatch.setattr(cpu_budget, "usable_cpus", lambda: 16)
    cfg_overrides = ["batch_size=64", "workers=auto"]
    dm = make_dm(data_yaml, tmp_path, batch_size=64, workers=compose_train(cfg_overrides).workers)
    attach(dm, devices)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    # 16 CPUs / devices per rank; train batch 64 / devices, at most 8 workers; val twice that, but at most its batch
    assert dm.train_dataset.cpus == rank_share and dm.val_dataset.cpus == rank_share
    assert train.num_workers == train_workers
    assert val.num_workers == min(val_workers, val.batch_size if val.batch_size > 1 else 0)  # 6 images: small
    for loader in (train, val):  # the threads of all of a rank's workers together: its share of the CPUs
        assert threads_per_loader(rank_share, loader.num_workers) * loader.num_workers <= rank_share


def test_workers_is_a_number_or_auto():
    assert compose_train([]).workers == "auto"
    assert prepare_config(compose_train(["workers=3"])).workers == 3
    for bad in ("workers=-1", "workers=many", "workers=1.5"):
        with pytest.raises(ConfigError, match="workers="):
            prepare_config(compose_train([bad]))


def test_one_device_unless_asked_for_more():
    cfg = compose_train([])
    assert cfg.trainer.devices == 1  # a plain run on an 8-GPU box trains on one GPU, as YOLOv5 and Ultralytics
    assert compose_train(["trainer.devices=4"]).trainer.devices == 4
    assert compose_train(["trainer=ddp"]).trainer.devices == -1  # the DDP preset: every visible GPU


@pytest.mark.parametrize(
    ("trainer", "find_unused", "start_method"),
    [
        ({"strategy": "ddp", "devices": 2}, False, "popen"),
        ({"strategy": "auto", "devices": 4, "accelerator": "gpu"}, False, "popen"),  # Lightning's choice: DDP
        ({"strategy": "auto", "devices": "auto", "accelerator": "auto"}, False, "popen"),  # all of 2 visible GPUs
        ({"strategy": "auto", "devices": 1, "num_nodes": 2}, False, "popen"),
        ({"strategy": "ddp_find_unused_parameters_true", "devices": 2}, True, "popen"),
        ({"strategy": "ddp_spawn", "devices": 2}, False, "spawn"),
    ],
)
def test_every_way_of_getting_ddp_gets_the_timeout(trainer, find_unused, start_method):
    strategy = resolve_strategy(trainer, 5400.0, environ={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert isinstance(strategy, DDPStrategy)
    assert strategy._timeout == timedelta(seconds=5400)  # the process-group timeout (no public getter)
    assert strategy._start_method == start_method
    assert bool(strategy._ddp_kwargs.get("find_unused_parameters", False)) == find_unused


def test_one_process_strategies_stay_as_given():
    assert resolve_strategy({"strategy": "auto", "devices": 1}, 60.0, environ={"CUDA_VISIBLE_DEVICES": "0,1"}) == "auto"
    assert (
        resolve_strategy({"strategy": "auto", "devices": "auto"}, 60.0, environ={"CUDA_VISIBLE_DEVICES": ""}) == "auto"
    )
    assert resolve_strategy({"strategy": "fsdp", "devices": 2}, 60.0, environ={}) == "fsdp"
