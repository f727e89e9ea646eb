"""Epoch time end to end (data, training, validation) side by side: YOLOv5 7.0's train.py and ours, alternated.

    bench/yolov5_env.sh            # once: YOLOv5 7.0 in bench/.venv-yolov5 (never a dependency of ours)
    .venv/bin/python bench/epoch.py --data shapes --epochs 4 --imgsz 160 --rounds 2
    .venv/bin/python bench/epoch.py --data bench --epochs 4 --imgsz 256 --rounds 2

Both train yolov5n from scratch, hyp scratch-low, SGD, the same batch, workers, image size and epochs, AutoAnchor on,
validating after every epoch (ours with its defaults: the COCO pass in the last epoch only). Each trainer records a
timestamp at the end of every epoch's validation (YOLOv5 through its ``on_fit_epoch_end`` callback, ours through
bench/epoch_clock.py given on the command line); the epoch time is the median gap between consecutive epochs from
the second on, so the start (imports, label caching, AutoAnchor) is reported apart, as the whole run's wall time.
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
    """Runs inside YOLOv5's environment: its train.main with a timestamp per epoch (on_fit_epoch_end)."""
    from yolov5 import train
    from yolov5.utils.callbacks import Callbacks

    stamps: list[float] = []
    callbacks = Callbacks()
    callbacks.register_action("on_fit_epoch_end", callback=lambda *a, **k: stamps.append(time.perf_counter()))
    opt = train.parse_opt(True)
    opt.data, opt.cfg, opt.weights, opt.hyp = args.data, "yolov5n.yaml", "", args.hyp
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


def epoch_time(stamps: list[float]) -> float:
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.median(gaps)


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
    head = "".join(f" {name + ' epoch':>16} {'ratio':>6}" for name, _ in variants)
    runs = "".join(f" {name + ' run':>14}" for name, _ in variants)
    print(f"{'round':>5} {'YOLOv5 epoch':>13}{head} {'YOLOv5 run':>11}{runs}")
    ratios: dict[str, list[float]] = {name: [] for name, _ in variants}
    for r in range(args.rounds):
        out = args.out / f"round{r}"
        out.mkdir(parents=True, exist_ok=True)
        y_wall, y_stamps = run_yolov5(data, args, out)
        y = epoch_time(y_stamps)
        cells, walls = "", ""
        for name, extra in variants:
            o_wall, o_stamps = run_ours(data, args, out, extra, name)
            o = epoch_time(o_stamps)
            ratios[name].append(o / y)
            cells += f" {o:>15.2f}s {o / y:>6.3f}"
            walls += f" {o_wall:>13.1f}s"
        print(f"{r:>5} {y:>12.2f}s{cells} {y_wall:>10.1f}s{walls}", flush=True)
    for name, rs in ratios.items():
        print(f"{name} / YOLOv5 per epoch: mean {statistics.mean(rs):.3f} over {len(rs)} rounds")


if __name__ == "__main__":
    main()
