"""RngState: the global generators come back from a checkpoint (weights_only), per rank."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch

from callbacks.rng_state import KEY, RngState, capture, restore


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


def _simulated_gpus(monkeypatch, visible: int) -> list[tuple[int, int]]:
    """Pretend ``visible`` GPUs exist; returns the (device, state marker) pairs set_rng_state receives."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append((device, int(state[0]))))
    return calls


def _state_with_cuda(n_gpus: int) -> dict:
    state = capture()
    state["cuda"] = [torch.full((4,), 10 + i, dtype=torch.uint8) for i in range(n_gpus)]
    return state


def test_cuda_states_of_gpus_not_visible_are_skipped_with_a_warning(monkeypatch, caplog):
    calls = _simulated_gpus(monkeypatch, visible=1)
    torch.manual_seed(3)
    state = _state_with_cuda(2)
    expected = float(torch.rand(1))
    restore(state)
    assert calls == [(0, 10)]
    assert float(torch.rand(1)) == expected  # the CPU generators are restored all the same
    assert "RNG states of 2 GPUs, 1 visible: restored 1, skipped 1" in caplog.text


def test_cuda_states_are_all_restored_when_the_gpu_counts_match(monkeypatch, caplog):
    calls = _simulated_gpus(monkeypatch, visible=2)
    restore(_state_with_cuda(2))
    assert calls == [(0, 10), (1, 11)]
    assert "skipped" not in caplog.text
