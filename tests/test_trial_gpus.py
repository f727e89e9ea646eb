"""Sweep jobs on a multi-GPU machine each see their own GPUs (a parallel launcher would stack them on GPU 0)."""

from __future__ import annotations

from detector.evolve.trial import job_gpus, visible_gpus

GPU1 = {"accelerator": "gpu", "devices": 1}


def test_jobs_take_their_own_gpus_round_robin():
    visible = ["0", "1", "2", "3"]
    assert [job_gpus(k, GPU1, visible) for k in range(6)] == ["0", "1", "2", "3", "0", "1"]
    two = {"accelerator": "auto", "devices": 2}
    assert [job_gpus(k, two, visible) for k in range(3)] == ["0,1", "2,3", "0,1"]
    three = {"accelerator": "cuda", "devices": "3"}
    assert job_gpus(1, three, visible) == "3,0,1"  # wraps around


def test_the_visible_set_is_respected():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "4,6"}) == ["4", "6"]
    assert [job_gpus(k, GPU1, ["4", "6"]) for k in range(3)] == ["4", "6", "4"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == [] and visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_no_pinning_where_it_has_no_meaning():
    visible = ["0", "1"]
    assert job_gpus(1, {"accelerator": "cpu", "devices": 1}, visible) is None
    assert job_gpus(1, {"accelerator": "gpu", "devices": [1]}, visible) is None  # the user chose
    assert job_gpus(1, {"accelerator": "gpu", "devices": -1}, visible) is None  # every GPU
    assert job_gpus(1, {"accelerator": "gpu", "devices": "auto"}, visible) is None
    assert job_gpus(1, {"accelerator": "gpu", "devices": 2}, visible) is None  # all of them anyway
    assert job_gpus(1, GPU1, []) is None  # no GPU (a Ray or SLURM task restricts the set itself)
