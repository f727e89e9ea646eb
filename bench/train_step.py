"""Training-step throughput: our DetectorModule under Lightning's Trainer against a bare PyTorch loop doing the same
work on the same batches.

    .venv/bin/python bench/train_step.py [--models yolov5n yolov5s] [--sizes 320 640] [--batch 16] [--steps 10]

Both sides run YOLOv5's step rule on one device: the schedule sets lr and momentum, forward, loss, backward (the
loss times world size), the optimizer step when the accumulation is reached, after clipping the gradient norm, then
the EMA update. The bare loop uses the same model, loss, optimizer groups and schedule objects, with a plain EMA lerp
(YOLOv5's ModelEMA); ours adds what a run has: Lightning's loop, manual optimization, our logging of losses, lr and
momentum, and the EMA through Lightning's WeightAveraging. Batches are fixed random images and boxes in memory (no
loader: bench/dataloader.py measures that). The first ``--warmup`` steps are not timed; a run's figure is images per
second of its median step. The two sides alternate ``--rounds`` times per setting; ours / bare is taken in each
round and reported as the mean over rounds with its 95 % interval, so that many short rounds can bound an overhead
of a few percent on a noisy machine. On CUDA both
run in AMP (16-mixed; the bare loop with autocast and a GradScaler).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from callbacks.ema import YoloEmaAverage  # noqa: E402
from detector.optim import build_optimizer, scaled_weight_decay  # noqa: E402
from detector.schedule import TrainingSchedule  # noqa: E402
from detector.train import build_module  # noqa: E402
from tests.helpers import compose_train  # noqa: E402

NC = 6


def make_batches(n: int, batch: int, imgsz: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of uint8 images and YOLO targets ``(image, cls, x, y, w, h)``, 6 boxes per image."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        imgs = torch.randint(0, 256, (batch, 3, imgsz, imgsz), dtype=torch.uint8, generator=gen)
        k = batch * 6
        wh = torch.rand(k, 2, generator=gen) * 0.3 + 0.02
        xy = torch.rand(k, 2, generator=gen) * (1 - wh) + wh / 2
        cls = torch.randint(0, NC, (k, 1), generator=gen).float()
        index = torch.arange(batch).repeat_interleave(6).float()[:, None]
        out.append((imgs, torch.cat([index, cls, xy, wh], 1)))
    return out


class StepTimes(L.Callback):
    """perf_counter after every training batch (CUDA synchronised)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def lightning_run(cfg, batches, device: str) -> list[float]:
    module = build_module(cfg, NC, {i: str(i) for i in range(NC)})
    times = StepTimes()
    trainer = L.Trainer(
        accelerator=device, devices=1, precision="16-mixed" if device == "cuda" else "32-true", max_epochs=1,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[instantiate(cfg.callbacks.ema), times],
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return times.times


def bare_run(cfg, batches, device: str) -> list[float]:
    module = build_module(cfg, NC, {i: str(i) for i in range(NC)}).to(device)
    model, loss_fn, hyp = module.model.train(), module.loss_fn, cfg.hyp
    opt = build_optimizer(model, "SGD", hyp.lr0, hyp.momentum,
                          scaled_weight_decay(hyp.weight_decay, cfg.batch_size, cfg.nbs))  # fmt: skip
    schedule = TrainingSchedule(
        nb=len(batches), epochs=cfg.epochs, batch_size=cfg.batch_size, lr0=hyp.lr0, momentum=hyp.momentum,
        warmup_bias_lr=hyp.warmup_bias_lr, lrf=hyp.lrf, warmup_epochs=hyp.warmup_epochs,
        warmup_momentum=hyp.warmup_momentum, **cfg.schedule,
    )  # fmt: skip
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    decay = YoloEmaAverage(cfg.callbacks.ema.decay, cfg.callbacks.ema.tau)
    cuda = device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    updates, last, times = 0, -1, []
    for ni, (imgs, targets) in enumerate(batches):
        imgs, targets = module._pixels(imgs.to(device, non_blocking=True)), targets.to(device)  # NHWC if configured
        schedule.apply(opt.param_groups, ni)
        with torch.autocast(device, enabled=cuda):
            loss, _ = loss_fn(model(imgs), targets)
        scaler.scale(loss).backward()
        if schedule.steps_at(ni, last):
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            last = ni
            updates += 1
            weight = 1 - decay.decay_at(updates)
            with torch.no_grad():
                for a, c in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
                    if a.is_floating_point():
                        a.lerp_(c, weight)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    return times


def images_per_second(times: list[float], warmup: int, batch: int) -> float:
    """Images per second of the run's median step after ``warmup`` steps: a stray slow step (the OS, the garbage
    collector) moves the median little, where it moves an average over a few steps by several percent."""
    return batch / statistics.median(b - a for a, b in zip(times[warmup:-1], times[warmup + 1 :], strict=True))


def ratio_summary(ratios: list[float]) -> str:
    """Mean of the per-round ratios with its 95 % interval (Student's t over rounds)."""
    if len(ratios) < 2:
        return f"{ratios[0]:.3f}"
    from scipy import stats

    mean, sem = statistics.mean(ratios), statistics.stdev(ratios) / len(ratios) ** 0.5
    half = stats.t.ppf(0.975, len(ratios) - 1) * sem
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["yolov5n", "yolov5s"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[320, 640])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="batches per run, warmup included")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("overrides", nargs="*", help="config overrides for both sides, e.g. channels_last=true")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")  # Lightning's notes on the loop without validation
    timed = args.steps - args.warmup - 1
    print(f"device {args.device}, batch {args.batch}, {timed} timed steps, torch {torch.__version__}, "
          f"overrides {args.overrides}")  # fmt: skip
    print(f"{'model':8} {'imgsz':>5} {'ours img/s':>11} {'bare img/s':>11}  ours/bare, mean of the rounds [95 % CI]")
    for name in args.models:
        for imgsz in args.sizes:
            cfg = compose_train([f"model={name}", f"imgsz={imgsz}", f"batch_size={args.batch}", *args.overrides])
            batches = make_batches(args.steps, args.batch, imgsz)
            ours, bare = [], []
            for _ in range(args.rounds):
                torch.manual_seed(0)
                ours.append(images_per_second(lightning_run(cfg, batches, args.device), args.warmup, args.batch))
                torch.manual_seed(0)
                bare.append(images_per_second(bare_run(cfg, batches, args.device), args.warmup, args.batch))
            ratios = [o / b for o, b in zip(ours, bare, strict=True)]
            each = ", ".join(f"{r:.3f}" for r in ratios)
            print(f"{name:8} {imgsz:>5} {statistics.mean(ours):>11.1f} {statistics.mean(bare):>11.1f}  "
                  f"{ratio_summary(ratios)} (rounds {each})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
