"""Evolution throughput side by side: children per hour and per-child overhead, ours against YOLOv5 7.0's --evolve.

    bench/yolov5_env.sh            # once: YOLOv5 7.0 in bench/.venv-yolov5 (never a dependency of ours)
    .venv/bin/python bench/evolve.py --data shapes --imgsz 160 --children 4

Both evolve yolov5n from scratch (hyp scratch-low, SGD, batch 16) at population 1, YOLOv5's sequence, on the same
data: YOLOv5 in one process (``train.py --evolve N``), ours one process per child (``-m hydra/sweeper=evolve``).
Children train 1 epoch: YOLOv5 7.0.14's ``--evolve`` (and ``--noval``) fails after the first of several epochs
(``map50s`` unbound in train.py), so 1-epoch children are what it can run. Children per hour come from the wall
time of the whole evolution. The per-child overhead (what does not grow with the epochs: process start, data,
model, AutoAnchor, the final validation) is t(1) minus one epoch's time, the epoch's time coming from two plain
runs of each trainer, 1 and 2 epochs (YOLOv5's with its per-epoch validation: it cannot skip it, see above).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from accuracy import OURS_PY, ROOT, Y5_PY, resolve_data, yolov5_env, yolov5_hyp


def run_yolov5(data: Path, args: argparse.Namespace, epochs: int, out: Path, evolve: bool = True) -> float:
    name = f"yolov5-{'evolve' if evolve else 'train'}-e{epochs}"
    shutil.rmtree(out / name, ignore_errors=True)
    cmd = [
        str(Y5_PY), "-m", "yolov5.train", *(["--evolve", str(args.children)] if evolve else ["--noplots"]),
        "--data", str(data), "--cfg", "yolov5n.yaml",
        "--weights", "", "--hyp", str(yolov5_hyp({}, out)), "--img", str(args.imgsz),
        "--batch-size", str(args.batch), "--epochs", str(epochs), "--workers", str(args.workers), "--device", "cpu",
        "--project", str(out), "--name", name, "--exist-ok",
    ]  # fmt: skip
    return timed(cmd, out / f"{name}.log", yolov5_env(out), out)


def run_ours(data: Path, args: argparse.Namespace, epochs: int, out: Path, evolve: bool = True) -> float:
    name = f"detector-{'evolve' if evolve else 'train'}-e{epochs}"
    shutil.rmtree(out / name, ignore_errors=True)
    how = ["-m", "hydra/sweeper=evolve", f"hydra.sweeper.generations={args.children}",
           f"hydra.sweeper.sweep_dir={out / name}", "hydra.sweeper.seed=0",
           "+callbacks.clock._target_=child_clock.ChildClock", *args.ours] if evolve else [
           f"hydra.run.dir={out / name}", "logger=csv", "val.coco=never"]  # fmt: skip
    cmd = [
        str(OURS_PY), "-m", "detector.train", *how, f"data={data}", "hyp=scratch-low", "model=yolov5n",
        f"imgsz={args.imgsz}", f"batch_size={args.batch}", f"epochs={epochs}", f"workers={args.workers}",
        "trainer=cpu", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}  # the children's ChildClock (bench/child_clock.py)
    return timed(cmd, out / f"{name}.log", env, ROOT)


STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _when(line: str) -> float:
    return datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def our_phases(folder: Path, log: Path) -> dict[str, float]:
    """Mean seconds per phase of our children 1..N-2 (child 0 also starts the forkserver, the last one has no next
    launch), from the sweep's log (when each job was launched: after the launcher composed its config), each
    child's results.json (start and end of ``train.run``'s fit) and its clock.json (bench/child_clock.py)."""
    lines = log.read_text().splitlines()
    launch = [_when(x) for x in lines if STAMP.match(x) and "detector.evolve.trial" in x and " job " in x]
    edges = {"start (fork, Hydra compose, run folder)": ("launch", "started"),
             "setup (model, data, Trainer, AutoAnchor, first batch)": ("started", "first_batch"),
             "training epoch": ("first_batch", "val_start"), "validation": ("val_start", "val_end"),
             "end of fit (results)": ("val_end", "finished"),
             "exit, sweep, launcher (next launch)": ("finished", "next")}  # fmt: skip
    sums = dict.fromkeys(edges, 0.0)
    jobs = range(1, len(launch) - 1)
    for i in jobs:
        t = json.loads((folder / str(i) / "clock.json").read_text())
        t |= {k: v for k, v in json.loads((folder / str(i) / "results.json").read_text()).items() if k != "final"}
        t |= {"launch": launch[i], "next": launch[i + 1]}
        for name, (a, b) in edges.items():
            sums[name] += (t[b] - t[a]) / len(jobs)
    return sums


def timed(cmd: list[str], log_path: Path, env: dict[str, str] | None, cwd: Path) -> float:
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=cwd)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="shapes", help="shapes, small-objects (bench/accuracy.py) or a data yaml")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--children", type=int, default=4, help="children per evolution")
    ap.add_argument(
        "--marginal",
        type=int,
        default=0,
        metavar="N",
        help="also evolve N more children (a second evolution of children+N): the cost of one more child, what a "
        "long evolution pays, without each sweep's start and end",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-evolve")
    ap.add_argument("ours", nargs="*", help="extra overrides for our sweep, e.g. trial_preload=false")
    args = ap.parse_args()
    if not Y5_PY.exists():
        sys.exit("YOLOv5 7.0 is not installed: run bench/yolov5_env.sh first")
    data = resolve_data(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    trainers = (("yolov5", run_yolov5), ("detector", run_ours))
    child, epoch = {}, {}
    for name, run in trainers:  # alternated: evolution, then the two plain runs
        child[name] = run(data, args, 1, args.out) / args.children
        print(f"{name:8s} evolution: {child[name]:.1f} s per 1-epoch child", flush=True)
    for name, run in trainers:
        epoch[name] = -run(data, args, 1, args.out, evolve=False) + run(data, args, 2, args.out, evolve=False)
        print(f"{name:8s} plain runs: {epoch[name]:.1f} s per extra epoch", flush=True)
    print(f"\ndata {data}, imgsz {args.imgsz}, batch {args.batch}, workers {args.workers}, "
          f"{args.children} children, population 1, 1 epoch each")  # fmt: skip
    print(f"{'':9s} {'s/child':>8s} {'epoch s':>8s} {'overhead s':>11s} {'children/h':>11s}")
    for name, _ in trainers:
        print(f"{name:9s} {child[name]:8.1f} {epoch[name]:8.1f} {child[name] - epoch[name]:11.1f} "
              f"{3600 / child[name]:11.1f}")  # fmt: skip
    print(f"\nchildren per hour, ours / YOLOv5's: {child['yolov5'] / child['detector']:.2f}x")
    if args.marginal:
        more, extra = argparse.Namespace(**vars(args) | {"children": args.children + args.marginal}), {}
        for name, run in trainers:
            extra[name] = (run(data, more, 1, args.out) - child[name] * args.children) / args.marginal
        ratio = extra["yolov5"] / extra["detector"]
        print(f"one more child ({args.children} and {more.children} children): YOLOv5 {extra['yolov5']:.1f} s, "
              f"ours {extra['detector']:.1f} s, children per hour {ratio:.2f}x")  # fmt: skip
    print("\nour children 1..N-2, mean seconds per phase:")
    for name, seconds in our_phases(args.out / "detector-evolve-e1", args.out / "detector-evolve-e1.log").items():
        print(f"  {name:55s} {seconds:6.2f}")


if __name__ == "__main__":
    main()
