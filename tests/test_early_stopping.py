"""Early stopping counted as YOLOv5 counts it: ties with the best are improvements, patience 0 is off."""

from __future__ import annotations

import torch

from callbacks.early_stopping import YoloEarlyStopping


def stop_epoch(fitness: list[float], patience: int) -> int | None:
    es = YoloEarlyStopping(patience=patience)
    for epoch, f in enumerate(fitness):
        if es._evaluate_stopping_criteria(torch.tensor(f))[0]:
            return epoch
    return None


def test_stops_patience_epochs_after_the_best():
    assert stop_epoch([0.1, 0.3, 0.2, 0.2, 0.25, 0.1], patience=3) == 4  # best at 1: stops at 1 + 3
    assert stop_epoch([0.1, 0.3, 0.2, 0.2, 0.35, 0.1], patience=3) is None


def test_a_tie_with_the_best_is_an_improvement():
    assert stop_epoch([0.0] * 10, patience=2) is None  # fitness sitting at 0 early on never stops a run
    assert stop_epoch([0.2, 0.1, 0.2, 0.1, 0.1], patience=2) == 4


def test_patience_zero_is_off():
    assert stop_epoch([0.3] + [0.1] * 20, patience=0) is None
