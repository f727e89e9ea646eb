"""A non-finite loss skips its batch with a warning; `max_bad_steps` of them in a row stop training clearly."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from callbacks.results_csv import read_results
from detector.train import run
from tests.test_train_e2e import tiny_cfg, tiny_data  # noqa: F401 (fixture)

POISON = "+callbacks.poison._target_=tests.helpers.PoisonLoss"


def test_a_nan_loss_is_skipped_and_training_goes_on(tiny_data, tmp_path, caplog):  # noqa: F811
    with caplog.at_level(logging.WARNING):
        run(tiny_cfg(tiny_data, tmp_path, "epochs=2", "autoanchor=false", POISON, "+callbacks.poison.batches=[0,2]"))
    skipped = [r for r in caplog.records if "loss is not finite" in r.getMessage()]
    assert [r.getMessage().split(":")[0] for r in skipped] == ["epoch 0 batch 0", "epoch 1 batch 0"]
    rows = read_results(tmp_path / "results.csv")
    assert len(rows) == 2 and all(math.isfinite(r["val/box_loss"]) for r in rows)
    state = torch.load(tmp_path / "weights" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_consecutive_nan_losses_stop_training_with_a_clear_error(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_cfg(tiny_data, tmp_path, "epochs=2", "autoanchor=false", "max_bad_steps=2", POISON,
                   "+callbacks.poison.batches=[1,2,3]")  # fmt: skip
    with pytest.raises(FloatingPointError, match="not finite for 2 batches in a row"):
        run(cfg)
    assert "max_bad_steps" in json.loads((tmp_path / "results.json").read_text())["error"]
    assert torch.load(tmp_path / "weights" / "last.ckpt", weights_only=True)["epoch"] == 0  # epoch 0 was good
