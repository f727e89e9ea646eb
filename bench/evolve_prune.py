"""What median stopping (``hydra.sweeper.prune=true``) saves, and whether it finds as good a hyp in the same epochs.

    .venv/bin/python bench/evolve_prune.py --data shapes --imgsz 128 --epochs 8 --children 16 --seeds 0 1

For each sweeper seed, two evolutions of yolov5n (hyp scratch-low, population 1) on the same data: one without
pruning, ``--children`` children of ``--epochs`` epochs, and one with pruning, continued (the same command with more
generations) until it has trained as many epochs as the first. Printed per seed: children, epochs trained, children
stopped early, the best fitness within the epoch budget, and the best among the first ``--children`` children.
Epochs are counted from each child's results.csv; wall times are printed too, but only an idle machine makes them
comparable. Last, how well a child's early fitness predicts its final one (rank correlation by epoch, over the
pruned evolutions' children that ran to the end): what any early-stopping rule can go by.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import yaml
from accuracy import OURS_PY, ROOT, resolve_data

from detector import CONF_DIR
from detector.callbacks.results_csv import read_results
from detector.evolve import history
from detector.evolve.genetic import fitness

WEIGHTS = yaml.safe_load((Path(CONF_DIR) / "hydra" / "sweeper" / "evolve.yaml").read_text())["fitness_weights"]


def sweep(data: Path, args: argparse.Namespace, seed: int, folder: Path, generations: int, prune: bool) -> float:
    """Run (or continue) one evolution up to ``generations`` children; returns its wall time."""
    cmd = [
        str(OURS_PY), "-m", "detector.train", "-m", "hydra/sweeper=evolve", f"hydra.sweeper.generations={generations}",
        f"hydra.sweeper.sweep_dir={folder}", f"hydra.sweeper.seed={seed}", f"hydra.sweeper.prune={str(prune).lower()}",
        f"data={data}", "hyp=scratch-low", "model=yolov5n", f"imgsz={args.imgsz}", f"batch_size={args.batch}",
        f"epochs={args.epochs}", f"workers={args.workers}", "trainer=cpu", "trainer.enable_progress_bar=false",
        *args.overrides,
    ]  # fmt: skip
    t0 = time.perf_counter()
    with open(folder.with_suffix(".log"), "a") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def children(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per child, in draw order: epochs trained and fitness (evolve.csv's row)."""
    _, values = history.read_csv(folder / history.CSV_NAME)
    epochs = []
    for i in range(len(values)):
        rows = read_results(folder / str(i) / "results.csv")
        epochs.append(int(max(r["epoch"] for r in rows)) + 1)
    return np.array(epochs), fitness(values, WEIGHTS)


def predictiveness(folders: list[Path], epochs: int) -> list[str]:
    """Rank correlation (Spearman) between a child's fitness by epoch k and its final fitness, over the children of
    the pruned evolutions that ran all ``epochs`` (they validate every epoch): how much an early fitness says."""
    from scipy.stats import spearmanr

    curves = []
    for folder in folders:
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
            try:
                rows = read_results(child / "results.csv")
            except (OSError, ValueError, KeyError, IndexError):
                continue
            values = [r.get("fitness", math.nan) for r in rows]
            if len(values) == epochs and all(math.isfinite(v) for v in values):
                curves.append(values)
    if len(curves) < 3:
        return []
    c = np.array(curves)
    lines = [f"{len(c)} children of the pruned evolutions ran all {epochs} epochs; Spearman of their final fitness "
             "with, by epoch k, the best fitness so far / the fitness at k (median fitness at k):"]  # fmt: skip
    for k in range(0, epochs - 1, max(1, epochs // 10)):
        best = spearmanr(c[:, : k + 1].max(1), c[:, -1])[0]
        at = spearmanr(c[:, k], c[:, -1])[0]
        lines.append(f"  epoch {k:3d}: {best:+.2f} / {at:+.2f} ({np.median(c[:, k]):.5f})")
    return lines


def within(epochs: np.ndarray, fit: np.ndarray, budget: int) -> tuple[int, float]:
    """Children whose epochs fit in the budget (in draw order) and the best fitness among them."""
    n = int(np.searchsorted(np.cumsum(epochs), budget, side="right"))
    return n, float(fit[:n].max()) if n else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=8, help="epochs per child")
    ap.add_argument("--children", type=int, default=16, help="children of the evolution without pruning")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sweeper seeds")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-evolve-prune")
    ap.add_argument("overrides", nargs="*", help="more overrides for every child, e.g. optimizer=AdamW hyp.lr0=0.001")
    args = ap.parse_args()
    data = resolve_data(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.children * args.epochs
    lines = []
    for seed in args.seeds:
        plain, pruned = args.out / f"plain-s{seed}", args.out / f"prune-s{seed}"
        wall_plain = sweep(data, args, seed, plain, args.children, prune=False)
        generations, wall_pruned = args.children, 0.0
        while True:  # continue the pruned evolution until it has spent the same epochs
            wall_pruned += sweep(data, args, seed, pruned, generations, prune=True)
            ep, _ = children(pruned)
            if ep.sum() >= budget:
                break
            generations += max(1, math.ceil((budget - ep.sum()) / args.epochs))
        ep0, fit0 = children(plain)
        ep1, fit1 = children(pruned)
        n1, best1 = within(ep1, fit1, budget)
        first, stopped = min(args.children, len(fit1)), int((ep1[:n1] < args.epochs).sum())
        lines.append(
            f"seed {seed}: no pruning {len(fit0)} children, {ep0.sum()} epochs, best {fit0.max():.5f} "
            f"({wall_plain:.0f} s) | pruning {n1} children in {ep1[:n1].sum()} epochs, {stopped} stopped "
            f"early, best {best1:.5f}; its first {first} children: {ep1[:first].sum()} epochs "
            f"({1 - ep1[:first].sum() / ep0[:first].sum():.0%} fewer), best {fit1[:first].max():.5f} "
            f"({wall_pruned:.0f} s for {len(fit1)} children)"
        )  # fmt: skip
        print(lines[-1], flush=True)
    print(f"\ndata {data}, imgsz {args.imgsz}, batch {args.batch}, {args.epochs} epochs per child, "
          f"budget {budget} epochs per evolution")  # fmt: skip
    print("\n".join(lines))
    print("\n".join(predictiveness([args.out / f"prune-s{seed}" for seed in args.seeds], args.epochs)))


if __name__ == "__main__":
    main()
