"""Resume: a SIGKILLed run continues in its own folder with `ckpt_path=last` and ends bit-identical to an
uninterrupted run; the stored config comes back and only `resume_may_differ` keys may change; a finished run says
so; checkpoints load with weights_only=True."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from callbacks.results_csv import read_results
from detector.data.shapes import ensure_shapes_dataset
from detector.resume import CONFIG_KEY, ResumeRefused, restore_config
from detector.train import run
from tests.helpers import compose_train
from tests.test_train_e2e import tiny_cfg

TIMEOUT = 600
SETTINGS = ("epochs=3", "imgsz=64", "batch_size=8", "workers=2", "trainer=cpu", "logger=csv", "nbs=16",
            "callbacks.autoanchor.gen=50", "hyp.warmup_epochs=0.5", "schedule.min_warmup_iters=3")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return ensure_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=32, n_val=8)


def train(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "detector.train", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    err, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-3000:]
    return err


def only_run(cwd: Path, name: str) -> Path:
    (folder,) = (cwd / "outputs" / name).iterdir()
    return folder


def test_a_sigkilled_run_resumes_in_its_folder_bit_identical(tiny_data, tmp_path):
    finish(train(tmp_path, f"data={tiny_data}", "name=whole", *SETTINGS))
    proc = train(tmp_path, f"data={tiny_data}", "name=probe", *SETTINGS)
    deadline = time.time() + TIMEOUT
    while not list((tmp_path / "outputs" / "probe").glob("*/weights/last.ckpt")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # into epoch 1 (4 batches of 8 per epoch); a fast machine finishes an epoch in under a second
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed = only_run(tmp_path, "probe")
    assert torch.load(killed / "weights" / "last.ckpt", weights_only=True)["epoch"] < 2  # killed before the end

    err = finish(train(tmp_path, "name=probe", "ckpt_path=last"))  # no settings needed: they come back
    assert only_run(tmp_path, "probe") == killed  # the same folder, no new one
    assert "Resuming from" in err

    whole = only_run(tmp_path, "whole")
    rows, ref = read_results(killed / "results.csv"), read_results(whole / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # one continuous results.csv
    assert rows == ref  # every loss, metric and lr of every epoch equal
    a = torch.load(killed / "weights" / "last.ckpt", weights_only=True)
    b = torch.load(whole / "weights" / "last.ckpt", weights_only=True)
    for key in ("state_dict", "current_model_state"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a[CONFIG_KEY]["epochs"] == 3 and a[CONFIG_KEY]["data"] == str(tiny_data)

    err = finish(train(tmp_path, "name=probe", "ckpt_path=last"))  # finished: says so, changes nothing
    assert "nothing to resume" in err
    assert read_results(killed / "results.csv") == rows


def test_resume_refuses_a_changed_setting_by_name_and_takes_allowed_ones(tiny_data, tmp_path):
    first = tmp_path / "a"
    stop = ("+callbacks.stop._target_=tests.helpers.StopAfterEpochs", "+callbacks.stop.epochs=1")
    run(tiny_cfg(tiny_data, first, "epochs=2", "autoanchor=false", *stop))
    ckpt = f"ckpt_path={first / 'weights' / 'last.ckpt'}"
    for bad, key in (("epochs=5", "epochs=5"), ("hyp.lr0=0.02", "hyp.lr0=0.02"), ("model=yolov5s", "model=")):
        with pytest.raises(ResumeRefused, match=key):
            run(tiny_cfg(tiny_data, tmp_path / "b", "epochs=2", ckpt, bad), overrides=[ckpt, bad])
    ok = (ckpt, "workers=1", "imgsz=96")  # imgsz: the run's 64 comes back... unless it was on the command line
    with pytest.raises(ResumeRefused, match="imgsz=96"):
        run(tiny_cfg(tiny_data, tmp_path / "b", *ok), overrides=list(ok))
    run(tiny_cfg(tiny_data, tmp_path / "b", ckpt, "workers=1", "epochs=40"), overrides=[ckpt, "workers=1"])
    config = (tmp_path / "b" / "config.yaml").read_text()
    assert "epochs: 2\n" in config and "workers: 1\n" in config and "autoanchor: false\n" in config
    assert [int(r["epoch"]) for r in read_results(tmp_path / "b" / "results.csv")] == [1]


def test_a_checkpoint_config_without_a_newer_setting_takes_its_default(tmp_path):
    cfg = compose_train([f"run_dir={tmp_path}", "epochs=7"])
    stored = OmegaConf.to_container(cfg, resolve=True)
    del stored["ddp_timeout"], stored["amp_check"]  # written before these settings existed
    restored = restore_config(cfg, stored, [])
    assert restored.ddp_timeout == cfg.ddp_timeout and restored.amp_check == cfg.amp_check
    assert restored.epochs == 7
