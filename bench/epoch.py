"""Epoch time end to end (data, training, validation) side by side: YOLOv5 7.0's train.py and ours, alternated.

    bench/yolov5_env.sh            # once: YOLOv5 7.0 in bench/.venv-yolov5 (never a dependency of ours)
    .venv/bin/python bench/epoch.py --data shapes --epochs 4 --imgsz 160 --rounds 2
    .venv/bin/python bench/epoch.py --data bench --epochs 4 --imgsz 256 --rounds 2

Both train yolov5n from scratch, hyp scratch-low, SGD, the same batch, workers, image size and epochs, AutoAnchor on,
validating after every epoch (ours with its defaults: the COCO pass in the last epoch only). Each trainer records a
timestamp at the end of every epoch's validation (YOLOv5 through its ``on_fit_epoch_end`` callback, ours through
bench/epoch_clock.py given on the command line); the epoch time is the median gap between consecutive epochs from
the second on, so the start (imports, label caching, AutoAnchor) is reported apart, as the whole run's wall time.
The epoch is split into the batch loop (epoch start to the end of the last batch: YOLOv5's ``on_train_epoch_end``,
our ``on_validation_start``) and the rest (validation, checkpoints, logging).
``--data`` is ``shapes``, ``bench`` (512 JPEGs of 240-480 px, the fidelity issue's second dataset as
bench/dataloader.py makes it) or a YOLOv5 data yaml. Prints per round and the ratio ours / YOLOv5 of the same round.
``--variant OVERRIDES`` (repeatable, space-separated overrides such as ``channels_last=true``) adds one more run of
ours per round with those overrides, timed in the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from accuracy import OURS_PY, Y5_PY, resolve_data, yolov5_env  # noqa: E402


def yolov5_child(args: argparse.Namespace) -> None:
    """Runs inside YOLOv5's environment: its train.main with timestamps at each epoch's start, the end of its batch
    loop and the end of its validation (on_fit_epoch_end)."""
    import numpy as np

    if not hasattr(np, "trapz"):  # removed in numpy 2.4; YOLOv5 7.0's AP uses it (a GPU image may hold numpy >= 2.4)
        np.trapz = np.trapezoid
    from yolov5 import train
    from yolov5.utils.callbacks import Callbacks

    stamps: dict[str, list[float]] = {"start": [], "val_start": [], "end": []}
    callbacks = Callbacks()
    for hook, key in (
        ("on_train_epoch_start", "start"),
        ("on_train_epoch_end", "val_start"),
        ("on_fit_epoch_end", "end"),
    ):
        callbacks.register_action(hook, callback=lambda *a, key=key, **k: stamps[key].append(time.perf_counter()))
    opt = train.parse_opt(True)
    opt.data, opt.cfg, opt.weights, opt.hyp = args.data, f"{args.model}.yaml", "", args.hyp
    opt.device, opt.cache = args.device, args.cache
    opt.imgsz, opt.batch_size, opt.epochs, opt.workers = args.imgsz, args.batch, args.epochs, args.workers
    opt.seed, opt.optimizer, opt.noplots, opt.exist_ok = 0, "SGD", True, True
    opt.project, opt.name = str(args.out), "yolov5"
    train.main(opt, callbacks)
    Path(args.stamps).write_text(json.dumps(stamps))


def timed(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=cwd)
    return time.perf_counter() - start


def run_yolov5(data: Path, args: argparse.Namespace, out: Path) -> tuple[float, list[float]]:
    where = "import yolov5, pathlib; print(pathlib.Path(yolov5.__file__).parent)"
    root = subprocess.check_output([str(Y5_PY), "-c", where], text=True).strip()
    stamps = out / "yolov5-stamps.json"
    cmd = [str(Y5_PY), str(Path(__file__).resolve()), "--yolov5-child", "--data", str(data), "--imgsz",
           str(args.imgsz), "--batch", str(args.batch), "--epochs", str(args.epochs), "--workers", str(args.workers),
           "--hyp", str(Path(root) / "data" / "hyps" / "hyp.scratch-low.yaml"), "--out", str(out),
           "--stamps", str(stamps)]  # fmt: skip
    wall = timed(cmd, yolov5_env(out), out / "yolov5.log", out)
    return wall, json.loads(stamps.read_text())


def run_ours(data: Path, args: argparse.Namespace, out: Path, extra: list[str], name: str) -> tuple[float, list[float]]:
    stamps = out / f"{name}-stamps.json"
    cmd = [
        str(OURS_PY), "-m", "detector.train", f"data={data}", "hyp=scratch-low", "model=yolov5n", "optimizer=SGD",
        f"imgsz={args.imgsz}", f"batch_size={args.batch}", f"epochs={args.epochs}", f"workers={args.workers}",
        "seed=0", "trainer=cpu", "trainer.enable_progress_bar=false", f"hydra.run.dir={out / name}",
        "+callbacks.epoch_clock._target_=epoch_clock.EpochClock", f"+callbacks.epoch_clock.path={stamps}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    wall = timed(cmd, env, out / f"{name}.log", ROOT)
    return wall, json.loads(stamps.read_text())


def epoch_time(stamps: dict[str, list[float]]) -> float:
    """Median gap between consecutive validation ends (the whole epoch, from the second on)."""
    ends = stamps["end"]
    return statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))


def train_time(stamps: dict[str, list[float]]) -> float:
    """Median time of the batch loop alone (epoch start to validation start), from the second epoch on."""
    return statistics.median(v - s for s, v in zip(stamps["start"][1:], stamps["val_start"][1:], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-epoch")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="one more run of ours per round with these space-separated overrides (repeatable)",
    )
    parser.add_argument("--yolov5-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hyp", help=argparse.SUPPRESS)
    parser.add_argument("--stamps", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="yolov5n", help=argparse.SUPPRESS)  # YOLOv5 child only (bench/gpu)
    parser.add_argument("--device", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.yolov5_child:
        return yolov5_child(args)
    if args.data == "bench":
        from dataloader import bench_dataset

        data = bench_dataset(Path(os.environ.get("DETECTOR_DATASETS", "~/.cache/detector/datasets")).expanduser()
                             / "bench-240-480")  # fmt: skip
    else:
        data = resolve_data(args.data)
    print(f"data {data}, yolov5n, imgsz {args.imgsz}, batch {args.batch}, workers {args.workers}, "
          f"{args.epochs} epochs; epoch = median gap between validations from the 2nd epoch on")  # fmt: skip
    variants = [("detector", [])] + [(f"variant{i}", v.split()) for i, v in enumerate(args.variant, 1)]
    for name, extra in variants[1:]:
        print(f"{name}: ours with {' '.join(extra)}")
    print("epoch = batch loop + the rest (validation, checkpoint, logging); ratios to YOLOv5's of the same round")
    head = ("round", "trainer", "epoch", "loop", "rest", "run", "epoch ratio", "loop ratio")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (5, 9, 8, 8, 7, 8, 12, 11), strict=True)))
    ratios: dict[str, list[float]] = {name: [] for name, _ in variants}
    loop_ratios: dict[str, list[float]] = {name: [] for name, _ in variants}
    for r in range(args.rounds):
        out = args.out / f"round{r}"
        out.mkdir(parents=True, exist_ok=True)
        y_wall, y_stamps = run_yolov5(data, args, out)
        y, y_loop = epoch_time(y_stamps), train_time(y_stamps)
        print(f"{r:>5} {'YOLOv5':>9} {y:>7.2f}s {y_loop:>7.2f}s {y - y_loop:>6.2f}s {y_wall:>7.1f}s", flush=True)
        for name, extra in variants:
            o_wall, o_stamps = run_ours(data, args, out, extra, name)
            o, o_loop = epoch_time(o_stamps), train_time(o_stamps)
            ratios[name].append(o / y)
            loop_ratios[name].append(o_loop / y_loop)
            print(f"{r:>5} {name:>9} {o:>7.2f}s {o_loop:>7.2f}s {o - o_loop:>6.2f}s {o_wall:>7.1f}s {o / y:>12.3f} "
                  f"{o_loop / y_loop:>11.3f}", flush=True)  # fmt: skip
    for name in ratios:
        print(f"{name} / YOLOv5: epoch {statistics.mean(ratios[name]):.3f}, batch loop "
              f"{statistics.mean(loop_ratios[name]):.3f} (means over {args.rounds} rounds)")  # fmt: skip


if __name__ == "__main__":
    main()
