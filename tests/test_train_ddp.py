"""DDP through the real entry point: 2 CPU processes (gloo) against 1 with the same total batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from callbacks.results_csv import read_results
from detector.data.shapes import ensure_shapes_dataset
from detector.train import own_ranks_in_slurm_task
from detector.val import validate
from tests.test_resume import TIMEOUT, finish, only_run, train
from tests.test_val_command import compose_val

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = ("epochs=3", "imgsz=64", "batch_size=8", "workers=0", "trainer=cpu", "logger=csv", "nbs=16",
            "callbacks.autoanchor.gen=50", "hyp.warmup_epochs=0.5", "schedule.min_warmup_iters=3",
            "hyp.anchors=3")  # fmt: skip  # placeholder anchors: AutoAnchor always computes new ones
DEFAULT_ANCHORS = torch.tensor(
    [[[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]], [[30.0, 61.0], [62.0, 45.0], [59.0, 119.0]],
     [[116.0, 90.0], [156.0, 198.0], [373.0, 326.0]]]
) / torch.tensor([8.0, 16.0, 32.0]).view(3, 1, 1)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return ensure_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=32, n_val=12)


def test_two_processes_train_like_one_with_the_same_total_batch(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    finish(train(tmp_path, f"data={tiny_data}", "name=one", *SETTINGS))
    probe = ("+callbacks.zz_probe._target_=tests.helpers.RankStateProbe", f"+callbacks.zz_probe.folder={tmp_path}")
    err = finish(train(tmp_path, f"data={tiny_data}", "name=two", *SETTINGS, "trainer.devices=2",
                       "trainer.strategy=ddp", *probe))  # fmt: skip
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in err
    for noise in ("💡 Tip", "LeafSpec", "sync_dist=True"):  # a clean console on every rank (detector.console)
        assert noise not in err, noise
    one, two = only_run(tmp_path, "one"), only_run(tmp_path, "two")
    rows_one, rows_two = read_results(one / "results.csv"), read_results(two / "results.csv")
    assert [r["epoch"] for r in rows_two] == [0, 1, 2]  # rank 0 alone writes
    for a, b in zip(rows_one, rows_two, strict=True):
        for key in ("x/lr0", "x/lr1", "x/lr2"):
            assert b[key] == a[key], key  # the same schedule: nb counts global batches
        for key in ("val/box_loss", "val/obj_loss", "val/cls_loss"):  # measured: within 0.12 %
            assert b[key] == pytest.approx(a[key], rel=0.01), (a["epoch"], key)
        # Each rank's loss is a mean over its own half of the batch (as in YOLOv5's DDP), and the logged epoch
        # loss is the mean over ranks: tiny batches with few objects put that up to 12 % from the global mean.
        for key in ("train/box_loss", "train/obj_loss", "train/cls_loss"):
            assert b[key] == pytest.approx(a[key], rel=0.2), (a["epoch"], key)
    assert rows_two[-1]["fitness"] == pytest.approx(rows_one[-1]["fitness"], abs=0.01)
    # One model on every rank: the weights validated (the EMA's, BatchNorm statistics included) and every
    # checkpoint's EMA and raw weights are bit-equal across ranks (rank 0's buffers are broadcast: ddp_buffers.py).
    records = [[json.loads(ln) for ln in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [r["at"] for r in records[0]].count("validation") == 3
    assert any("current_model_state.bn_stats" in r for r in records[0])  # the EMA's checkpoint hook ran first
    assert records[0] == records[1]
    # The logged final metrics are those of the saved model: last.ckpt re-validated in one process, with the run's
    # val batch (2 ranks x 8), gives results.csv's values (the val losses are means of other batches: close only).
    cfg = compose_val([f"ckpt={two / 'weights' / 'last.ckpt'}", f"run_dir={tmp_path / 'val'}", "batch_size=16",
                       "workers=0", "accelerator=cpu"])  # fmt: skip
    val = validate(cfg)
    for key in ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "fitness"):
        assert val[key] == pytest.approx(rows_two[-1][key], rel=1e-4, abs=1e-9), key  # results.csv: 5 digits
    ck_one = torch.load(one / "weights" / "last.ckpt", weights_only=True)
    ck_two = torch.load(two / "weights" / "last.ckpt", weights_only=True)
    key = "model.model.24.anchors"
    assert not torch.equal(ck_one["state_dict"][key], DEFAULT_ANCHORS)  # AutoAnchor replaced the placeholders
    assert torch.equal(ck_one["state_dict"][key], ck_two["state_dict"][key])  # computed once, broadcast alike
    assert ck_two["global_step"] == ck_one["global_step"]  # the same optimizer steps (accumulation)
    assert ck_two["current_model_state"].keys() == ck_one["current_model_state"].keys()
    for name in ("state_dict", "current_model_state"):  # EMA and raw weights after 3 epochs
        a, b = (torch.cat([c[name][k].float().flatten() for k in c[name] if c[name][k].is_floating_point()])
                for c in (ck_one, ck_two))  # fmt: skip
        assert float((a - b).norm() / a.norm()) < 0.05, name  # measured 0.016: BatchNorm sees half batches per rank


@pytest.mark.slow  # 23 s; make test-all
def test_torchrun_ranks_share_one_run_folder(tiny_data, tmp_path):
    """YOLOv5's documented launch: torchrun starts every rank, and rank 0 publishes the run folder in its store."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "detector.train",
         f"data={tiny_data}", "name=trun", *SETTINGS[1:], "epochs=1", "trainer.devices=2", "trainer.strategy=ddp"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(tmp_path, "trun")  # one folder for both ranks
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [0]
    assert (run / "weights" / "last.ckpt").is_file()


@pytest.mark.slow  # about 1 min; make test-all
def test_two_nodes_of_two_ranks_train_into_one_folder(tiny_data, tmp_path):
    """Multi-node as torchrun runs it (two agents, static rendezvous), both "nodes" on this machine: 4 ranks, one run
    folder, and cache=ram written once per node (each node's file is its own: a per-node name)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", "29617", "-m", "detector.train", f"data={tiny_data}",
           "name=nodes", *SETTINGS[1:], "epochs=1", "trainer.devices=2", "trainer.num_nodes=2", "trainer.strategy=ddp",
           "cache=ram"]  # fmt: skip
    nodes = [subprocess.Popen([*cmd[:3], "--node_rank", str(n), *cmd[3:]], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for n in (0, 1)]  # fmt: skip
    logs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "MEMBER: 4/4" in logs[0] + logs[1]
    run = only_run(tmp_path, "nodes")
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [0]
    assert (run / "weights" / "last.ckpt").is_file()
    assert "-n0-train.bin" in logs[0]  # rank 0 logs; node 1's writer logs nothing (rank-0-only logging)


@pytest.mark.slow  # about 40 s; make test-all
def test_slurm_tasks_train_into_the_jobs_run_folder(tiny_data, tmp_path):
    """Two SLURM tasks of one step, as srun starts them (their SLURM_* variables, no srun here): Lightning's SLURM
    environment joins them, and both write to outputs/<name>/slurm-<job>.<step>."""
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODEID": "0", "SLURM_NNODES": "1",
             "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NODELIST": "localhost",
             "SLURM_JOB_NAME": "train"}  # fmt: skip
    cmd = [sys.executable, "-m", "detector.train", f"data={tiny_data}", "name=sl", *SETTINGS[1:], "epochs=1",
           "trainer.devices=2", "trainer.strategy=ddp"]  # fmt: skip
    tasks = [subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, **slurm, "SLURM_PROCID": str(r),
                              "SLURM_LOCALID": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]  # fmt: skip
    logs = [p.communicate(timeout=600)[0] for p in tasks]
    assert [p.returncode for p in tasks] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "MEMBER: 2/2" in logs[1]
    folders = [p for p in (tmp_path / "outputs" / "sl").iterdir() if p.is_dir()]
    assert [p.name for p in folders] == ["slurm-4242.0"]
    assert [r["epoch"] for r in read_results(folders[0] / "results.csv")] == [0]


def test_a_one_task_slurm_job_starts_its_own_ranks_only_when_it_needs_them():
    one_task = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "CUDA_VISIBLE_DEVICES": "0,1"}
    ddp2 = {"devices": 2, "strategy": "ddp", "num_nodes": 1}
    assert own_ranks_in_slurm_task(ddp2, one_task)  # else Lightning waits for SLURM's tasks and refuses devices=2
    assert own_ranks_in_slurm_task({"devices": "auto", "accelerator": "gpu"}, one_task)  # auto: both GPUs
    assert not own_ranks_in_slurm_task({"devices": 1}, one_task)  # one process: SLURM's environment (auto-requeue)
    assert not own_ranks_in_slurm_task(ddp2, {**one_task, "SLURM_NTASKS": "2"})  # srun started the ranks
    assert not own_ranks_in_slurm_task(ddp2, {"CUDA_VISIBLE_DEVICES": "0,1"})  # no SLURM
    assert not own_ranks_in_slurm_task({**ddp2, "num_nodes": 2}, one_task)  # other nodes need SLURM's tasks


@pytest.mark.slow  # about 30 s; make test-all
def test_a_rank_killed_ends_the_whole_run_at_once(tiny_data, tmp_path):
    """SIGKILL of one rank (an OOM kill, a lost node): the other ranks fail at their next collective, and the run
    ends with an error instead of waiting for ddp_timeout (3 h)."""
    proc = train(tmp_path, f"data={tiny_data}", "name=kill", *SETTINGS, "epochs=50", "trainer.devices=2",
                 "trainer.strategy=ddp")  # fmt: skip
    deadline = time.time() + TIMEOUT
    while not list((tmp_path / "outputs" / "kill").glob("*/weights/last.ckpt")) and time.time() < deadline:
        time.sleep(0.05)  # training for sure: an epoch is done
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ranks = [int(p) for p in children if "LOCAL_RANK=1" in Path(f"/proc/{p}/environ").read_text().replace("\0", " ")]
    assert len(ranks) == 1, children
    os.kill(ranks[0], signal.SIGKILL)
    killed = time.time()
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert time.time() - killed < 30  # not ddp_timeout: rank 0 fails at its next collective (~1 s idle)
