"""Replay YOLOv5 7.0's recorded training run (tests/data/lockstep, made by bench/lockstep_reference.py) through our
Trainer, LightningModule and callbacks, and name the first component whose numbers leave YOLOv5's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset, Sampler

from detector.train import build_module
from tests.helpers import compose_train

DATA = Path(__file__).parent / "data" / "lockstep"


def load_reference(optimizer: str = "SGD") -> dict[str, Any]:
    """The SGD record, or another optimizer's records on the SGD record's initial weights and batches."""
    ref = torch.load(DATA / "reference.pt", weights_only=False)
    if optimizer != "SGD":
        ref.update(torch.load(DATA / f"reference_{optimizer.lower()}.pt", weights_only=False))
    return ref


def tensor_stats(state: dict[str, torch.Tensor]) -> np.ndarray:
    """(n, 2) float64 sum and sum of squares of every floating-point tensor, in state-dict order."""
    return np.asarray(
        [(float(v.double().sum()), float(v.double().pow(2).sum())) for v in state.values() if v.is_floating_point()]
    )


class _EpochBatches(Sampler):
    """Yields (batch_idx, epoch); the trainer calls set_epoch."""

    def __init__(self, nb: int) -> None:
        self.nb, self.epoch = nb, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.nb

    def __iter__(self):
        return iter([(i, self.epoch) for i in range(self.nb)])


class RecordedBatches(Dataset):
    """Batch ``epoch * nb + i`` of the recorded run, rebuilt from the PNGs: (uint8 RGB images, targets, paths, None)."""

    def __init__(self, ref: dict[str, Any], nb: int) -> None:
        self.batches, self.nb = ref["batches"], nb
        self.images = {p.name: cv2.imread(str(p))[..., ::-1].transpose(2, 0, 1).copy() for p in DATA.glob("images/*")}

    def __len__(self) -> int:
        return self.nb

    def __getitem__(self, item: tuple[int, int]):
        b = self.batches[item[1] * self.nb + item[0]]
        imgs = torch.from_numpy(np.stack([self.images[n] for n in b["names"]]))
        if int(imgs.double().sum()) != b["img_sum"]:
            raise AssertionError(f"batch {item} does not rebuild YOLOv5's images")
        return imgs, torch.from_numpy(b["targets"]).float(), b["names"], None


class StepRecorder(L.Callback):
    """After every batch: lr and momentum per group, accumulation, whether it stepped, weight and EMA sums."""

    def __init__(self, ema: Any) -> None:
        self.ema, self.records, self._steps = ema, [], 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        stepped = trainer.global_step != self._steps
        self._steps = trainer.global_step
        average = self.ema._average_model.module.model if self.ema is not None else None
        self.records.append(
            {
                "lr": [float(g["lr"]) for g in groups],
                "momentum": [float(g.get("momentum", g.get("betas", (0,))[0])) for g in groups],
                "stepped": stepped,
                "loss_items": pl_module.last_loss_items.double().numpy(),
                "grad_norm": pl_module.last_grad_norm if stepped else None,
                "weights": tensor_stats(pl_module.model.state_dict()),
                "ema": tensor_stats(average.state_dict()) if stepped and average is not None else None,
            }
        )


def lockstep_config(ref: dict[str, Any], run_dir: Path, overrides: list[str] = ()):
    meta = ref["meta"]
    hyp = [f"hyp.{k}={v}" for k, v in meta["hyp"].items()]
    return compose_train(
        [
            f"run_dir={run_dir}",
            "trainer=cpu",
            "logger=none",
            f"model.width_multiple={meta['width_multiple']}",
            f"model.depth_multiple={meta['depth_multiple']}",
            f"imgsz={meta['imgsz']}",
            f"batch_size={meta['batch_size']}",
            f"epochs={meta['epochs']}",
            f"optimizer={meta['optimizer']}",
            f"seed={meta['seed']}",
            *hyp,
            *overrides,
        ]
    )


@dataclass
class Replay:
    records: list[dict[str, Any]]


def replay(ref: dict[str, Any], run_dir: Path, overrides: list[str] = (), iterations: int | None = None) -> Replay:
    """Train our module on YOLOv5's recorded batches from YOLOv5's initial weights, for the first ``iterations``
    (whole epochs; default all recorded batches) of the run's ``epochs``."""
    cfg = lockstep_config(ref, run_dir, overrides)
    meta = ref["meta"]
    nb = meta["nb"]
    iterations = len(ref["batches"]) if iterations is None else iterations
    module = build_module(cfg, meta["nc"], {i: str(i) for i in range(meta["nc"])})
    module.model.load_state_dict(ref["init_state"])
    callbacks = {k: instantiate(v) for k, v in cfg.callbacks.items() if k == "ema" and v is not None}
    ema = callbacks.get("ema")
    recorder = StepRecorder(ema)
    loader = DataLoader(RecordedBatches(ref, nb), batch_size=None, sampler=_EpochBatches(nb), num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=iterations // nb,  # the schedule still spans cfg.epochs
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=True,
        precision=cfg.trainer.precision,
        callbacks=[*callbacks.values(), recorder],
        default_root_dir=str(run_dir),
    )
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order, whatever else the machine runs: chaos amplifies the rest
    try:
        trainer.fit(module, train_dataloaders=loader)
    finally:
        torch.set_num_threads(threads)
    return Replay(recorder.records)


def _close(a: Any, b: Any, rtol: float, atol: float = 0.0) -> bool:
    return bool(np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol))


def stats_error(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-tensor relative error of (sum, sum of squares); a sum is scaled by |sum| + L2 norm (sums cancel)."""
    s, q = ref[:, 0], ref[:, 1]
    tiny = np.finfo(np.float64).tiny
    return np.maximum(np.abs(ours[:, 0] - s) / (np.abs(s) + np.sqrt(q) + tiny), np.abs(ours[:, 1] - q) / (q + tiny))


def _schedule_mismatch(ni: int, ours: dict[str, Any], ref: dict[str, Any], phase: str) -> str | None:
    """Where iteration ``ni``'s lr or momentum leaves YOLOv5's, named with ``phase``; None when both agree."""
    for key in ("lr", "momentum"):
        if not _close(ours[key], ref[key], 1e-9, 1e-12):
            return f"iteration {ni}: {phase} {key} {ours[key]} != YOLOv5 {ref[key]}"
    return None


def warmup_end(ref: dict[str, Any]) -> int:
    """YOLOv5's last warmup iteration in the record: the first at which the bias lr (falling from warmup_bias_lr)
    meets the others' (rising from 0)."""
    return next(i for i, r in enumerate(ref["schedule"]) if abs(r["lr"][0] - r["lr"][1]) <= 1e-12 * abs(r["lr"][1]))


def schedule_divergence(ref: dict[str, Any], ours: Replay, iterations: int | None = None) -> str | None:
    """The first iteration whose lr, momentum or stepping leaves YOLOv5's recorded schedule, or None.

    The schedule is recorded for the whole run, past the end of warmup, where the weights are no longer comparable
    (chaos); it does not depend on them.
    """
    n = len(ref["schedule"]) if iterations is None else iterations
    if len(ours.records) < n:
        return f"iteration count: ours {len(ours.records)}, YOLOv5 {n}"
    nw = warmup_end(ref)
    for ni, (r, o) in enumerate(zip(ref["schedule"][:n], ours.records[:n], strict=True)):
        phase = "warmup" if ni <= nw else "scheduler (after warmup)"
        if found := _schedule_mismatch(ni, o, r, phase):
            return found
        if o["stepped"] != r["stepped"]:
            return f"iteration {ni}: {phase} accumulation: ours {'stepped' if o['stepped'] else 'accumulated'}"
    return None


def first_divergence(
    ref: dict[str, Any], ours: Replay, loss_rtol: float = 2e-6, weight_rtol: float = 2e-5, iterations: int | None = None
) -> str | None:
    """The first iteration and component at which our run leaves YOLOv5's record, or None when it never does.

    Components in the order one iteration computes them: warmup/scheduler (lr, momentum) -> loss (same weights in,
    losses out) -> gradient (norm before clipping) -> accumulation (whether it stepped) -> optimizer step
    (weights after it; clipping acts here when the norm exceeds max_norm) -> EMA.
    """
    n = len(ref["records"]) if iterations is None else iterations
    if len(ours.records) < n:
        return f"iteration count: ours {len(ours.records)}, YOLOv5 {n}"
    max_norm = ref["meta"]["max_grad_norm"]
    names = [k for k, v in ref["init_state"].items() if v.is_floating_point()]
    prev_err = 0.0
    for ni, (r, o) in enumerate(zip(ref["records"][:n], ours.records[:n], strict=True)):
        if found := _schedule_mismatch(ni, o, r, "warmup/scheduler"):
            return found
        if not _close(o["loss_items"], r["loss_items"], loss_rtol):
            where = f"iteration {ni}: loss (box, obj, cls) {o['loss_items']} != YOLOv5 {r['loss_items']}"
            if ni and prev_err > 0:  # the loss sees a weight difference below weight_rtol before the sums do
                where += f"; the weights entering it were off by {prev_err:.1e} after the optimizer step before"
            return where
        if o["stepped"] != r["stepped"]:
            return f"iteration {ni}: accumulation: ours {'stepped' if o['stepped'] else 'accumulated'}, YOLOv5 not"
        if r["stepped"] and not _close(float(o["grad_norm"]), r["grad_norm"], weight_rtol):
            return f"iteration {ni}: gradient norm {o['grad_norm']} != YOLOv5 {r['grad_norm']}"
        err = stats_error(o["weights"], r["weights"])
        prev_err = float(err.max())
        if err.max() > weight_rtol:
            bad = int(err.argmax())
            what = "clipping/optimizer step" if r["stepped"] and r["grad_norm"] > max_norm else "optimizer step"
            if not r["stepped"]:
                what = "weights without a step (BatchNorm statistics)"
            return f"iteration {ni}: {what}: {names[bad]} off by {err[bad]:.2e} (relative)"
        if r["stepped"]:
            if o["ema"] is None:
                return f"iteration {ni}: EMA not updated"
            err = stats_error(o["ema"], r["ema"])
            if err.max() > weight_rtol:
                return f"iteration {ni}: EMA weights: {names[int(err.argmax())]} off by {err.max():.2e} (relative)"
    return None
