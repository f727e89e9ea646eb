"""Early stopping counted as YOLOv5 counts it: ties with the best are improvements, patience 0 is off."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

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


def _fit(limit_val_batches: int) -> L.Trainer:
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=limit_val_batches, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[YoloEarlyStopping(patience=5)])  # fmt: skip
    trainer.fit(BoringModel())
    return trainer


def test_a_run_without_validation_trains_on_with_early_stopping_off():
    assert _fit(limit_val_batches=0).current_epoch == 2  # Lightning's own EarlyStopping raises here


def test_a_validating_run_without_the_metric_still_fails():
    with pytest.raises(RuntimeError, match="fitness"):
        _fit(limit_val_batches=1)  # BoringModel logs no fitness: a misnamed monitor stays an error
