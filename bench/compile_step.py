"""torch.compile against eager for one training step's model work: forward, loss and backward of yolov5n.

    .venv/bin/python bench/compile_step.py [--model yolov5n] [--imgsz 160] [--batch 16] [--steps 6]

Prints ms per step for eager and for ``model.compile()`` (inductor) on the same random batch, and the seconds the
first compiled step took (the compilation). Both run in one process, eager first, so the ratio is one sitting's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.train import build_module  # noqa: E402
from tests.helpers import compose_train  # noqa: E402

NC = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="yolov5n")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = compose_train([f"model={args.model}", f"imgsz={args.imgsz}"])
    module = build_module(cfg, NC, {i: str(i) for i in range(NC)})
    model, loss_fn = module.model.train(), module.loss_fn
    b, k = args.batch, args.batch * 6
    imgs = torch.rand(b, 3, args.imgsz, args.imgsz)
    wh = torch.rand(k, 2) * 0.3 + 0.02
    xy = torch.rand(k, 2) * (1 - wh) + wh / 2
    image = torch.arange(b).repeat_interleave(6).float()[:, None]
    targets = torch.cat([image, torch.randint(0, NC, (k, 1)).float(), xy, wh], 1)

    def step() -> None:
        loss, _ = loss_fn(model(imgs), targets)
        loss.backward()

    def per_step() -> float:
        step()  # warm
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        return (time.perf_counter() - t0) / args.steps

    eager = per_step()
    t0 = time.perf_counter()
    model.compile()
    step()
    compile_s = time.perf_counter() - t0
    compiled = per_step()
    print(f"{args.model} {args.imgsz} px batch {b}: eager {eager * 1e3:.0f} ms, compiled {compiled * 1e3:.0f} ms "
          f"({eager / compiled:.2f}x), first compiled step {compile_s:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
