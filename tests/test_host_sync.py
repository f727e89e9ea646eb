"""Host waits on the device in training: a tiny CPU fit counts, per optimizer step, the calls that would make the host
wait for a CUDA device, and caps them; a non-finite loss on a batch whose flag is read later is dropped the same way.

On the CPU nothing waits, so the count follows what would live on the device: the model's parameters, buffers and
gradients, the EMA's, each batch, tensors made with ``device=`` the training device, and everything computed from them
(followed through every aten op, backward included). A ``non_blocking`` copy to the CPU (the progress bar's pinned copy)
is host-side. Counted on device-side tensors: ``.item()``, ``bool()``, ``int()``, ``float()`` (aten
``_local_scalar_dense``), ``.tolist()``, ``.numpy()``, ``.cpu()``, and ``torch.tensor``/``as_tensor`` of host data onto
the training device (a blocking copy); apart from them, the ops whose output size the host must read (``nonzero``,
boolean indexing). A blocking ``.to()`` between host and device cannot be told from a no-op on a CPU run.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

from callbacks.results_csv import read_results
from detector.callbacks.ema import YoloEMA
from detector.data.shapes import ensure_shapes_dataset
from detector.train import run
from tests.test_train_e2e import schedule_of, tiny_cfg

aten = torch.ops.aten
SHAPE_OPS = {aten.nonzero.default, aten.masked_select.default}  # output sizes the host reads from the device
INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}  # with a boolean mask: the same
# 40 images at batch 8: 5 batches an epoch. Accumulation ramps to nbs / batch = 3 over 4 warmup iterations: optimizer
# steps after batches 0, 2, 5, 8, 11, 14. Lightning writes the loggers after batch 9 (log_every_n_steps=10).
SCHEDULE = ("epochs=3", "autoanchor=false", "nbs=24", "hyp.warmup_epochs=0", "schedule.min_warmup_iters=4")
STEPS = [0, 2, 5, 8, 11, 14]
FIRST_COUNTED = 3  # batches 0-2: one-time work (DatasetPlots draws them from the device batch)


@pytest.fixture(scope="module")
def data40(tmp_path_factory):
    return ensure_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=40, n_val=8)


@dataclass
class Window:
    """One training batch, from its on_train_batch_start to the next batch's (or validation, or the epoch's end)."""

    ni: int
    written: bool  # Lightning writes its step values to the loggers
    last: bool  # the epoch's last batch
    steps_before: int
    stepped: bool = False
    events: list[tuple[str, str]] = field(default_factory=list)  # (call, where)

    def reads(self) -> list[tuple[str, str]]:
        return [e for e in self.events if e[0] != "shape"]

    def shapes(self) -> int:
        return sum(e[0] == "shape" for e in self.events)


class Tracker:
    """Which tensors live on the (would-be) training device, and the counted calls of the open window."""

    def __init__(self) -> None:
        self.on_device: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.train_device: torch.device | None = None
        self.window: Window | None = None

    def mark(self, tree: Any) -> None:
        for t in tree_leaves(tree):
            if isinstance(t, torch.Tensor):
                self.on_device[t] = True

    def device_side(self, tree: Any) -> bool:
        return any(isinstance(t, torch.Tensor) and t in self.on_device for t in tree_leaves(tree))

    def count(self, call: str) -> None:
        if self.window is not None:
            self.window.events.append((call, caller()))


def caller() -> str:
    """The innermost frame outside torch and this file: ``path:line function``."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename)
        if "torch" not in path.parts and path.name != Path(__file__).name:
            return f"{'/'.join(path.parts[-2:])}:{frame.lineno} {frame.name}"
    return "?"


class DeviceDispatch(TorchDispatchMode):
    """Marks the outputs of every op with a device-side input; counts the device reads among them."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device_side = self.tracker.device_side((args, kwargs))
        if device_side:
            if func is aten._local_scalar_dense.default:
                self.tracker.count("item")  # .item(), bool(), int(), float()
            elif func in SHAPE_OPS or (
                func in INDEX_OPS and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
            ):
                self.tracker.count("shape")
        out = func(*args, **kwargs)
        if device_side and func is not aten.copy_.default:  # a copy keeps its destination where it is
            self.tracker.mark(out)
        return out


class DeviceFunctions(TorchFunctionMode):
    """The calls that read a tensor without an aten op on the CPU, and where new tensors are put."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tracker = self.tracker
        if name in ("tolist", "numpy", "cpu") and tracker.device_side(args[0]):
            tracker.count(name)
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            return out
        device = kwargs.get("device")
        if name == "to" and out is not args[0]:
            target = next((a for a in (*args[1:], device) if isinstance(a, (str, torch.device))), None)
            if kwargs.get("non_blocking") and target is not None and torch.device(target).type == "cpu":
                tracker.on_device.pop(out, None)  # an asynchronous copy to the host
        elif device is not None and torch.device(device) == tracker.train_device:
            if name in ("tensor", "as_tensor"):
                tracker.count(f"{name}(device=)")  # host data copied to the device
            tracker.mark(out)
        return out


TRACKER = Tracker()


class SyncWindows(L.Callback):
    """Opens a counting window at each training batch's start; it closes at the next one, or before validation or
    the epoch's end: Lightning's logger writes after the batch count, validation does not. ``SyncWindows.last``: the
    instance of the last fit."""

    last: SyncWindows | None = None

    def __init__(self) -> None:
        self.windows: list[Window] = []
        self.nl = 0
        SyncWindows.last = self

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        TRACKER.train_device = pl_module.device
        TRACKER.mark([*pl_module.parameters(), *pl_module.buffers()])
        for cb in trainer.callbacks:
            if isinstance(cb, YoloEMA):
                TRACKER.mark([*cb._average_model.parameters(), *cb._average_model.buffers()])
        self.nl = pl_module.model.detect.nl

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._close(trainer)
        TRACKER.mark(batch)
        ni = batch_idx + pl_module.nb * trainer.current_epoch
        last = batch_idx + 1 == pl_module.nb
        self.windows.append(Window(ni, pl_module._step_values_written(), last, trainer.global_step))
        TRACKER.window = self.windows[-1]

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close(trainer)

    def _close(self, trainer: L.Trainer) -> None:
        if TRACKER.window is not None:
            TRACKER.window.stepped = trainer.global_step > TRACKER.window.steps_before
            TRACKER.window = None


class ScaleLoss(L.Callback):
    """Multiplies the training loss by ``factor`` on the listed global batch numbers."""

    def __init__(self, batches: list[int], factor: float) -> None:
        self.batches, self.factor = set(batches), factor

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss_fn, counter = pl_module.loss_fn, iter(range(1 << 30))

        def scaled(preds, targets):
            loss, items = loss_fn(preds, targets)
            if not torch.is_grad_enabled():  # validation
                return loss, items
            return (loss * self.factor, items) if next(counter) in self.batches else (loss, items)

        pl_module.loss_fn = scaled


def test_schedule_of_these_tests(data40, tmp_path):
    plan = schedule_of(tiny_cfg(data40, tmp_path, *SCHEDULE), nb=5).plan()
    last = -1
    steps = []
    for ni, accumulate in enumerate(plan.accumulate.tolist()):
        if ni - last >= accumulate:
            steps.append(ni)
            last = ni
    assert steps == STEPS


def test_host_reads_per_optimizer_step(data40, tmp_path):
    """At most one host read per optimizer step, where the non-finite flags of its batches are read (before the step:
    a bad batch must not step). A batch whose values go to the loggers, or the epoch's last, reads on its own (the
    logged loss; the epoch's flags), and the epoch's last progress-bar line waits for its mean. Batches that only
    accumulate read nothing. Apart: YOLOv5's target assignment sizes its matches on the host, 2 per output level."""
    cfg = tiny_cfg(data40, tmp_path, *SCHEDULE, "+callbacks.sync_windows._target_=tests.test_host_sync.SyncWindows")
    with DeviceDispatch(TRACKER), DeviceFunctions(TRACKER):
        run(cfg)
    probe = SyncWindows.last
    windows = [w for w in probe.windows if w.ni >= FIRST_COUNTED]
    assert [w.ni for w in windows] == list(range(FIRST_COUNTED, 15))
    assert [w.ni for w in probe.windows if w.stepped] == STEPS
    for w in windows:
        cap = int(w.stepped or w.written or w.last) + int(w.last)  # + the progress bar's epoch line
        assert len(w.reads()) <= cap, (w.ni, w.reads())
        assert w.shapes() == 2 * probe.nl, (w.ni, w.events)
    # per optimizer step: its own batch and the batches that accumulated into it
    group: list[Window] = []
    lines = []
    for w in windows:
        group.append(w)
        if not w.stepped:
            continue
        reads = [r for g in group for r in g.reads()]
        extra = sum(int(g.written or g.last) for g in group if not g.stepped) + sum(g.last for g in group)
        lines.append(f"optimizer step after batch {w.ni} ({len(group)} batches, {extra} logger writes / epoch "
                     f"ends): {len(reads)} host reads {dict(Counter(reads))}")  # fmt: skip
        assert len(reads) <= 1 + extra, lines[-1]
        group = []
    print("\n".join(lines))
    assert len(lines) == 4  # batches 6-8 make the step of the middle of an epoch: one read
    assert "after batch 8 (3 batches, 0 logger writes / epoch ends): 1 host reads" in lines[1]


def nonfinite_run(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """A run of SCHEDULE; returns the non-finite warnings' "epoch E batch B (n in a row)"."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    logging.getLogger("detector").addHandler(handler)
    try:
        run(tiny_cfg(data, run_dir, *SCHEDULE, *extra))
    finally:
        logging.getLogger("detector").removeHandler(handler)
    messages = [r.getMessage() for r in records if "loss is not finite" in r.getMessage()]
    return [m.split(":")[0] + " " + m.split("skipped ")[1] for m in messages]


def test_a_nan_loss_on_an_accumulating_batch_drops_its_window(data40, tmp_path):
    """Batch 7 accumulates (its flag is read at batch 8): its NaN drops its window's gradients, batch 6's too, exactly
    as a zero loss on batches 6 and 7 would; batch 8 then steps alone. Its warning names it, and its losses stay out
    of the epoch's means."""
    poisoned = nonfinite_run(data40, tmp_path / "nan", "+callbacks.poison._target_=tests.helpers.PoisonLoss",
                             "+callbacks.poison.batches=[7]")  # fmt: skip
    assert poisoned == ["epoch 1 batch 2 (1 in a row)"]
    zeroed = nonfinite_run(data40, tmp_path / "zero", "+callbacks.zero._target_=tests.test_host_sync.ScaleLoss",
                           "+callbacks.zero.batches=[6,7]", "+callbacks.zero.factor=0.0")  # fmt: skip
    assert zeroed == []
    a, b = (torch.load(d / "weights" / "last.ckpt", weights_only=True) for d in (tmp_path / "nan", tmp_path / "zero"))
    for key in ("state_dict", "current_model_state"):  # the EMA's weights and the model's
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(torch.isfinite(v).all() for v in a["state_dict"].values() if v.is_floating_point())
    rows, zero_rows = read_results(tmp_path / "nan" / "results.csv"), read_results(tmp_path / "zero" / "results.csv")
    assert [r["train/box_loss"] for r in rows[::2]] == [r["train/box_loss"] for r in zero_rows[::2]]  # epochs 0, 2
    assert all(math.isfinite(r["train/box_loss"]) for r in rows)


def test_nan_losses_on_accumulating_batches_stop_training(data40, tmp_path):
    """Batches 12 and 13 accumulate; their flags, read at batch 14, stop the run at max_bad_steps=2."""
    with pytest.raises(FloatingPointError, match="not finite for 2 batches in a row"):
        nonfinite_run(data40, tmp_path, "max_bad_steps=2", "+callbacks.poison._target_=tests.helpers.PoisonLoss",
                      "+callbacks.poison.batches=[12,13]")  # fmt: skip
    assert torch.load(tmp_path / "weights" / "last.ckpt", weights_only=True)["epoch"] == 1  # epoch 1 was good
