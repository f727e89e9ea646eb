"""Sweep jobs each see their own GPUs (a parallel launcher would stack them on GPU 0) and start their DDP ranks."""

from __future__ import annotations

from detector.evolve.trial import child_env, job_gpus, visible_gpus

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


ONE_TASK_JOB = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "train",
                "SLURM_PROCID": "0", "PATH": "/bin"}  # fmt: skip


def test_a_ddp_child_of_a_one_task_slurm_job_starts_its_ranks_itself():
    env = child_env(ONE_TASK_JOB, None, ddp=True)
    assert "SLURM_NTASKS" not in env and "SLURM_NTASKS_PER_NODE" not in env  # else Lightning refuses devices=2
    assert env["SLURM_JOB_ID"] == "7" and env["PATH"] == "/bin"  # everything else is inherited
    assert child_env(ONE_TASK_JOB, None, ddp=False) is None  # one device: SLURM's view is right as it is
    assert child_env({"PATH": "/bin"}, None, ddp=True) is None  # no SLURM
    assert child_env({"PATH": "/bin"}, "2,3", ddp=True) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2,3"}
