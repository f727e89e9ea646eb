"""Median stopping: a child whose best fitness so far is below the median of the finished children's running mean
fitness stops there."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from detector.callbacks.median_stop import MedianStopping, finished_fitness_upto


def write_child(folder, fitness_per_epoch, finished=True):
    folder.mkdir(parents=True)
    lines = ["epoch,fitness", *(f"{e},{f}" for e, f in enumerate(fitness_per_epoch))]
    (folder / "results.csv").write_text("\n".join(lines) + "\n")
    (folder / "results.json").write_text(json.dumps({"fitness": fitness_per_epoch[-1]} if finished else {}))


def fake_trainer(own, epoch, fitness, max_epochs=10):
    return SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, sanity_checking=False, is_global_zero=True,
                           callback_metrics={"fitness": torch.tensor(fitness)}, default_root_dir=str(own),
                           strategy=SimpleNamespace(broadcast=lambda v, src=0: v), should_stop=False)  # fmt: skip


def run_epochs(cb, own, history, max_epochs=10):
    """Feed the callback one validation per epoch; returns the trainer of the last."""
    for epoch, f in enumerate(history):
        trainer = fake_trainer(own, epoch, f, max_epochs)
        cb.on_validation_end(trainer, None)
        if trainer.should_stop:
            break
    return trainer


@pytest.fixture
def sweep(tmp_path):
    # mean of (f/4, f/2, f) is 7f/12: 0.0583, 0.1167, 0.175, 0.2333, 0.2917 by epoch 2, median 0.175
    for i, f in enumerate([0.1, 0.2, 0.3, 0.4, 0.5]):
        write_child(tmp_path / str(i), [f / 4, f / 2, f])
    write_child(tmp_path / "5", [0.9, 0.9, 0.9], finished=False)  # still running: not counted
    write_child(tmp_path / "6", [0.9])  # finished (pruned) before epoch 2: not counted at epoch 2
    (tmp_path / "7").mkdir()  # this child
    return tmp_path


def test_finished_children_up_to_an_epoch(sweep):
    got = finished_fitness_upto(sweep, 2)
    assert sorted(v[-1] for v in got) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert [len(v) for v in got] == [3] * 5
    assert len(finished_fitness_upto(sweep, 0)) == 6  # child 6 counts where it validated
    assert len(finished_fitness_upto(sweep, 0, exclude=sweep / "0")) == 5


@pytest.mark.parametrize(
    ("history", "stops"),
    [
        ([0.0, 0.0, 0.174], True),  # best 0.174 < median 0.175 of the running means
        ([0.0, 0.0, 0.176], False),
        ([0.176, 0.0, 0.0], False),  # a bad last epoch alone does not stop a child that did better before
        ([0.0, 0.174, 0.1], True),
    ],
)
def test_best_so_far_below_the_median_of_running_means_stops(sweep, history, stops):
    cb = MedianStopping(sweep_dir=sweep, min_epochs=3, min_finished=5)
    trainer = run_epochs(cb, sweep / "7", history)
    assert trainer.should_stop is stops and cb.stopped_epoch == (2 if stops else None)
    assert cb.best == pytest.approx(max(history))


def test_the_best_so_far_survives_a_checkpoint(sweep):
    cb = MedianStopping(sweep_dir=sweep, min_epochs=3, min_finished=5)
    run_epochs(cb, sweep / "7", [0.176, 0.0])
    resumed = MedianStopping(sweep_dir=sweep, min_epochs=3, min_finished=5)
    resumed.load_state_dict(cb.state_dict())
    trainer = fake_trainer(sweep / "7", 2, 0.0)
    resumed.on_validation_end(trainer, None)
    assert trainer.should_stop is False  # a fresh callback would have stopped at best 0.0
    fresh = MedianStopping(sweep_dir=sweep, min_epochs=3, min_finished=5)
    fresh.on_validation_end(trainer, None)
    assert trainer.should_stop is True


def test_no_stop_before_min_epochs_or_enough_children_or_at_the_last_epoch(sweep):
    for cb, epoch, max_epochs in (
        (MedianStopping(sweep_dir=sweep, min_epochs=4, min_finished=5), 2, 10),  # too early
        (MedianStopping(sweep_dir=sweep, min_epochs=2, min_finished=6), 2, 10),  # 5 finished children only
        (MedianStopping(sweep_dir=sweep, min_epochs=2, min_finished=5), 2, 3),  # the last epoch ends anyway
    ):
        trainer = fake_trainer(sweep / "7", epoch, 0.0, max_epochs)
        cb.on_validation_end(trainer, None)
        assert trainer.should_stop is False


def test_a_pruning_sweep_gives_children_the_callback_and_validation_every_epoch(tmp_path):
    import yaml
    from hydra.utils import instantiate

    from detector import CONF_DIR
    from detector.evolve.sweeper import EvolveSweeperImpl
    from tests.helpers import compose_train

    settings = yaml.safe_load((Path(CONF_DIR) / "hydra" / "sweeper" / "evolve.yaml").read_text())
    settings = {k: v for k, v in settings.items() if k != "_target_"} | {"prune": True}
    overrides = EvolveSweeperImpl(**settings)._trial_overrides(tmp_path)
    assert "trainer.check_val_every_n_epoch=1" in overrides
    assert not any("${epochs}" in o for o in overrides)
    cfg = compose_train([o for o in overrides if not o.startswith("callbacks.lr_plot")])
    assert cfg.trainer.check_val_every_n_epoch == 1
    cb = instantiate(cfg.callbacks.median_stop)
    assert isinstance(cb, MedianStopping) and cb.sweep_dir == tmp_path.resolve() and cb.min_finished == 5


def test_min_epochs_below_one_is_a_fraction_of_the_epochs(sweep):
    cb = MedianStopping(sweep_dir=sweep, min_epochs=0.3, min_finished=5)
    assert cb.epochs_before_stopping(10) == 3 and cb.epochs_before_stopping(20) == 6
    assert MedianStopping(sweep_dir=sweep, min_epochs=4, min_finished=5).epochs_before_stopping(20) == 4
    # with 0.4 of 10 epochs a child may stop after its 4th (epoch 3), not after its 3rd (the fixture's epoch 2)
    trainer = run_epochs(MedianStopping(sweep_dir=sweep, min_epochs=0.4, min_finished=5), sweep / "7", [0.0] * 3)
    assert trainer.should_stop is False
    with pytest.raises(ValueError, match="min_epochs"):
        MedianStopping(sweep_dir=sweep, min_epochs=-1, min_finished=5)
