"""Run folders: the live-run lock, `ckpt_path=last` (this name's newest run that is not running), atomic saves."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from detector.checkpoint_io import AtomicCheckpointIO
from detector.run_folder import RunFolderError, RunLock, is_live, resolve_checkpoint, run_folder


def make_run(root, name, mtime):
    ckpt = root / name / "weights" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    (root / name / "config.yaml").write_text("epochs: 3\n")
    os.utime(ckpt, (mtime, mtime))
    return ckpt


def hold(run_dir) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock, as a live run does."""
    code = f"from detector.run_folder import RunLock; lock = RunLock({str(run_dir)!r}); import time; time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(600):
        if is_live(run_dir):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the holder did not take the lock")


def test_last_is_this_names_newest_run_that_is_not_running(tmp_path):
    runs = tmp_path / "outputs" / "probe"
    with pytest.raises(RunFolderError, match="no run under"):
        resolve_checkpoint("last", runs)
    old, new = make_run(runs, "a", 1000), make_run(runs, "b", 2000)
    make_run(tmp_path / "outputs" / "other", "c", 3000)  # another name's newer run is never picked
    assert resolve_checkpoint("last", runs) == new
    holder = hold(new.parent.parent)  # b is live
    try:
        assert not is_live(old.parent.parent)
        assert resolve_checkpoint("last", runs) == old
        with pytest.raises(RunFolderError, match="still running"):
            resolve_checkpoint(str(new), runs)
        own = new.parent.parent  # a DDP rank > 0 of the live run itself: its own run is no obstacle
        assert resolve_checkpoint("last", runs, own_run=own) == new
        assert resolve_checkpoint(str(new), runs, own_run=own) == new
        with pytest.raises(RunFolderError, match="in use by a live run"):
            RunLock(new.parent.parent)
        lock_a = RunLock(old.parent.parent)  # held by this process: its own run is not live to itself
        assert not is_live(old.parent.parent)
        lock_a.release()
        holder_a = hold(old.parent.parent)
        with pytest.raises(RunFolderError, match="every run .* is still running"):
            resolve_checkpoint("last", runs)
        holder_a.kill()
        holder_a.wait()
    finally:
        holder.kill()
        holder.wait()
    assert not is_live(new.parent.parent)
    assert resolve_checkpoint(None, runs) is None
    with pytest.raises(RunFolderError, match="no such checkpoint"):
        resolve_checkpoint(str(tmp_path / "nope.ckpt"), runs)


def test_run_folder_is_the_resumed_runs_own_or_a_new_one(tmp_path):
    runs = tmp_path / "outputs" / "probe"
    ckpt = make_run(runs, "a", 1000)
    assert run_folder(None, str(runs), "stamp") == f"{runs}/stamp"
    assert run_folder("last", str(runs), "stamp") == str(ckpt.parent.parent.resolve())
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(b"x")
    assert run_folder(str(loose), str(runs), "stamp") == f"{runs}/stamp"  # not in a run folder: a new run


def test_ranks_started_by_srun_share_one_folder(tmp_path):
    env = {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "8812", "SLURM_STEP_ID": "0"}
    folders = {
        run_folder(None, str(tmp_path), f"stamp-{rank}", {**env, "SLURM_PROCID": str(rank)}) for rank in range(4)
    }
    assert folders == {f"{tmp_path}/slurm-8812.0"}  # not each task's own clock
    assert (
        run_folder(None, str(tmp_path), "stamp", {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "8812"}) == f"{tmp_path}/stamp"
    )


def test_a_killed_holder_frees_the_lock(tmp_path):
    proc = hold(tmp_path)
    proc.kill()
    proc.wait()
    assert not is_live(tmp_path)  # SIGKILL drops the flock: the run can be resumed


def test_checkpoints_are_written_atomically_in_their_folder(tmp_path, monkeypatch):
    path = tmp_path / "weights" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"a": torch.ones(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))

    def killed(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # interrupted in the middle of writing

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))  # the old checkpoint is whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
