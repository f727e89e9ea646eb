"""The AMP check compares real detections, falls back to full precision when mixed precision disagrees, and its
decision is rank 0's on every Lightning-launched rank."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.ops import box_iou

from detector import amp_check
from detector.amp_check import (
    DECISION_ENV,
    check_amp,
    checked_precision,
    detections,
    disagreement,
    load_asset,
)
from detector.boxes import xywh2xyxy
from detector.models import DetectionModel
from tests.helpers import compose_train


@pytest.fixture
def settings():
    return OmegaConf.to_container(compose_train([]).amp_check)


def test_asset_detects_the_objects_of_its_image(settings):
    model, image = load_asset()
    dets = detections(model, image, settings)
    dets = dets[dets[:, 4] >= settings["conf_thres"]]
    labels = torch.load(amp_check.ASSET, weights_only=True)["labels"]
    h, w = image.shape[2:]
    truth = xywh2xyxy(labels[:, 1:].float() * torch.tensor([w, h, w, h]))
    assert len(dets) >= settings["min_detections"] and len(labels) >= settings["min_detections"]
    iou = box_iou(truth, dets[:, :4])
    assert (iou.max(1).values > 0.7).all()  # every object found
    assert (dets[iou.argmax(1), 5] == labels[:, 0]).all()  # with its class


def test_bf16_autocast_agrees_on_cpu(settings):
    assert check_amp(torch.device("cpu"), "bf16-mixed", settings) is None


def test_disagreement_names_what_differs(settings):
    model, image = load_asset()
    ref = detections(model, image, settings)
    assert disagreement(ref, ref.clone(), settings) is None
    assert "none in the other" in disagreement(ref, ref[:0], settings)
    moved = ref.clone()
    moved[:, [0, 2]] += 0.2 * (ref[:, 2] - ref[:, 0]).unsqueeze(1)  # shifted by a fifth of their width
    assert "no match" in disagreement(ref, moved, settings)
    relabelled = ref.clone()
    relabelled[:, 5] = (relabelled[:, 5] + 1) % 6
    assert "no match" in disagreement(ref, relabelled, settings)
    extra = torch.cat([ref, torch.tensor([[0.0, 0.0, 30.0, 30.0, 0.9, 0.0]])])
    assert "mixed-precision" in disagreement(ref, extra, settings)  # a spurious mixed-precision detection
    crossing = ref.clone()
    crossing[:, 4] -= 0.05  # confidences that move a little (one crossing the threshold) still agree
    assert disagreement(ref, crossing, settings) is None


def test_an_untrained_model_cannot_pass(tmp_path, settings):
    """YOLOv5's check passes on a model with no detections; ours says the check itself is broken."""
    asset = torch.load(amp_check.ASSET, weights_only=True)
    model = DetectionModel(asset["model"], nc=int(asset["nc"]))
    asset["state"] = model.state_dict()
    torch.save(asset, tmp_path / "untrained.pt")
    with pytest.raises(RuntimeError, match="asset is broken"):
        check_amp(torch.device("cpu"), "bf16-mixed", settings, tmp_path / "untrained.pt")


def test_falls_back_to_full_precision_with_a_warning(monkeypatch, caplog, settings):
    real = amp_check.detections

    def broken_autocast(model, image, settings, dtype=None):
        out = real(model, image, settings, dtype).clone()
        if dtype is not None:
            out[:, :4] *= 0.5  # what a device with broken half-precision kernels might return
        return out

    monkeypatch.setattr(amp_check, "detections", broken_autocast)
    monkeypatch.delenv(DECISION_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="detector.amp_check"):
        assert checked_precision("bf16-mixed", {"accelerator": "cpu"}, settings) == "32-true"
    assert "AMP check failed on cpu" in caplog.text and "no match" in caplog.text
    assert os.environ[DECISION_ENV] == "bf16-mixed=>32-true"  # what the ranks Lightning launches will take


def test_other_ranks_take_rank_zeros_decision(monkeypatch, settings):
    monkeypatch.setattr(amp_check.rank_zero_only, "rank", 1)
    monkeypatch.setenv(DECISION_ENV, "bf16-mixed=>32-true")
    monkeypatch.setattr(amp_check, "check_amp", lambda *a, **k: pytest.fail("rank 1 must not run its own check"))
    assert checked_precision("bf16-mixed", {"accelerator": "cpu"}, settings) == "32-true"


def test_full_precision_and_disabled_check_run_nothing(monkeypatch, settings):
    monkeypatch.setattr(amp_check, "check_amp", lambda *a, **k: pytest.fail("no check expected"))
    assert checked_precision("32-true", {}, settings) == "32-true"
    assert checked_precision("16-mixed", {}, {**settings, "enabled": False}) == "16-mixed"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LOCAL_RANK": "2", "SLURM_LOCALID": "3"}, 2),  # Lightning's or torchrun's ranks (also inside SLURM)
        ({"SLURM_LOCALID": "3", "SLURM_PROCID": "7"}, 3),  # a task srun started: no LOCAL_RANK
        ({"SLURM_PROCID": "7"}, 0),
        ({}, 0),
    ],
)
def test_node_local_rank_reads_local_rank_then_slurm_localid(env, expected):
    assert amp_check.node_local_rank(env) == expected


def test_an_srun_task_checks_on_its_own_gpu(monkeypatch, settings):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv(DECISION_ENV, raising=False)
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setattr(amp_check.rank_zero_only, "rank", 5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    checked: list[torch.device] = []
    monkeypatch.setattr(amp_check, "check_amp", lambda device, *a, **k: checked.append(device))
    assert checked_precision("16-mixed", {"accelerator": "gpu", "devices": [4, 6]}, settings) == "16-mixed"
    assert checked == [torch.device("cuda", 6)]
