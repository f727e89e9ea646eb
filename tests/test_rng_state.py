"""RngState: the global generators come back from a checkpoint (weights_only), per rank."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch

from callbacks.rng_state import KEY, RngState


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    callback, trainer = RngState(), SimpleNamespace(world_size=1, global_rank=0)
    checkpoint: dict = {}
    callback.on_save_checkpoint(trainer, None, checkpoint)
    expected = draws()
    torch.save(checkpoint, tmp_path / "c.ckpt")
    draws()  # the generators move on, as training would
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)
    callback.on_load_checkpoint(trainer, None, loaded)
    assert draws() == expected


def test_a_checkpoint_of_another_world_size_leaves_the_generators_alone(caplog):
    callback = RngState()
    checkpoint: dict = {}
    callback.on_save_checkpoint(SimpleNamespace(world_size=1, global_rank=0), None, checkpoint)
    checkpoint[KEY] = checkpoint[KEY] * 2
    torch.manual_seed(5)
    expected = float(torch.rand(1))
    torch.manual_seed(5)
    callback.on_load_checkpoint(SimpleNamespace(world_size=1, global_rank=0), None, checkpoint)
    assert "2 ranks" in caplog.text
    assert float(torch.rand(1)) == expected
