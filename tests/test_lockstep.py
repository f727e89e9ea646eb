"""Lock-step parity with YOLOv5 7.0: our Trainer, module and callbacks replay YOLOv5's own recorded run.

The record (tests/data/lockstep/reference.pt, made by bench/lockstep_reference.py in YOLOv5's environment) holds a
120-iteration float64 run from YOLOv5's initial weights: every batch; for the first 48 iterations, after every
batch the losses, lr and momentum per group, whether it stepped, the gradient norm and per-tensor weight and EMA
sums; for all 120, the schedule alone (lr, momentum, stepping), past the end of warmup at iteration 100. The first 44
iterations hold 31 optimizer steps, through warmup (lr, momentum, accumulation 1 -> 2), clipping (norms 9-40
against max 10) and EMA. Both sides run in float64: early training is chaotic (float64 noise
grows about tenfold every 6 iterations), and float32 rounding would leave tolerance only for a few steps.
reference_adamw.pt holds the same run with YOLOv5's AdamW (same initial weights and batches), schedule included.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from detector.schedule import TrainingSchedule
from tests.lockstep import first_divergence, load_reference, replay, schedule_divergence, warmup_end

ITERATIONS = 44  # 31 optimizer steps; our float64 error stays below 1.3e-6 (weights) and 7e-8 (losses) up to here


@pytest.fixture(scope="module")
def reference():
    return load_reference()


def test_reference_exercises_every_component(reference):
    records = reference["records"][:ITERATIONS]
    steps = [r for r in records if r["stepped"]]
    assert len(steps) >= 30
    assert not all(r["stepped"] for r in records)  # accumulation reached 2
    assert max(r["grad_norm"] for r in steps) > reference["meta"]["max_grad_norm"]  # clipping acts
    assert min(r["grad_norm"] for r in steps) < reference["meta"]["max_grad_norm"]  # and not always
    assert records[0]["lr"][0] > records[-1]["lr"][0] and records[0]["lr"][1] < records[-1]["lr"][1]  # warmup
    assert records[0]["momentum"][0] < records[-1]["momentum"][0]


def test_lockstep_with_yolov5(reference, tmp_path):
    """Step for step over the first 44 iterations; the schedule over the whole recorded run, past warmup."""
    schedule = reference["schedule"]
    nw = warmup_end(reference)
    assert nw == 100 and len(schedule) >= nw + 20  # warmup's end, the epoch after it and the scheduler's steps
    assert len({r["lr"][1] for r in schedule[nw:]}) >= 15 and any(r["stepped"] for r in schedule[nw + 1 :])
    ours = replay(reference, tmp_path, ["trainer.precision=64-true"], len(schedule))
    assert first_divergence(reference, ours, iterations=ITERATIONS) is None
    assert schedule_divergence(reference, ours) is None


def test_lockstep_schedule_fails_one_epoch_ahead(reference, tmp_path, monkeypatch):
    """Past warmup, YOLOv5's epoch k trains at lr0 * lf(k - 1); a scheduler one epoch ahead is caught there."""
    original = TrainingSchedule.at

    def ahead(self: TrainingSchedule, ni: int):
        values = original(self, ni)
        if ni // self.nb > self.nw // self.nb:
            return replace(values, lrs=tuple(self.lr0 * self.lf(ni // self.nb) for _ in values.lrs))
        return values

    monkeypatch.setattr(TrainingSchedule, "at", ahead)
    ours = replay(reference, tmp_path, ["trainer.precision=64-true"], len(reference["schedule"]))
    found = schedule_divergence(reference, ours)
    assert found is not None and found.startswith("iteration 101: scheduler (after warmup) lr"), found


PERTURBATIONS = [  # (override, the component the first divergence must name)
    ("max_grad_norm=5", "clipping"),
    ("hyp.warmup_momentum=0.937", "momentum"),
    ("nbs=32", "accumulation"),
    ("callbacks.ema.tau=1000", "EMA"),
    ("callbacks.ema.from_init=false", "EMA"),
    ("hyp.warmup_bias_lr=0.011", "lr"),
    ("hyp.box=0.0501", "loss"),
    ("hyp.weight_decay=0.005", "optimizer step"),
]
ADAMW = ["trainer.precision=64-true"]  # the default leaves Adam's beta1 alone in warmup, as YOLOv5
FAST = {"max_grad_norm=5", "hyp.warmup_momentum=0.937", "nbs=32", "callbacks.ema.from_init=false"}


@pytest.mark.parametrize(
    "override,component",
    [pytest.param(o, c, marks=() if o in FAST else pytest.mark.slow) for o, c in PERTURBATIONS],
)
def test_lockstep_fails_on_a_perturbed_component(reference, tmp_path, override, component):
    ours = replay(reference, tmp_path, ["trainer.precision=64-true", override], 24)
    found = first_divergence(reference, ours, iterations=24)
    assert found is not None and component in found, found


def test_lockstep_with_yolov5_adamw(tmp_path):
    """YOLOv5's AdamW groups (betas=(momentum, 0.999), decay on weights only) step for step, from the same start."""
    reference = load_reference("AdamW")
    ours = replay(reference, tmp_path, ADAMW, len(reference["schedule"]))
    assert first_divergence(reference, ours, iterations=ITERATIONS) is None
    assert schedule_divergence(reference, ours) is None  # beta1 stays at momentum past warmup too
    ramped = replay(reference, tmp_path / "ramped", [*ADAMW, "schedule.ramp_adam_beta1=true"], 8)
    found = first_divergence(reference, ramped, iterations=8)
    assert found is not None and "momentum" in found, found
