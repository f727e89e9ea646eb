"""`python -m detector.evolve_plot DIR [--fitness-weights P R MAP50 MAP]`: evolve.png from DIR's evolve.csv."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from detector.evolve.history import CSV_NAME
from detector.plots.evolve import plot_evolve

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder", type=Path, help="an evolution's sweep folder (or its evolve.csv)")
    ap.add_argument("--fitness-weights", type=float, nargs=4, default=(0.0, 0.0, 0.1, 0.9),
                    help="weights of P, R, mAP@0.5, mAP@0.5:0.95 (the sweeper's fitness_weights)")  # fmt: skip
    args = ap.parse_args(argv)
    csv = args.folder if args.folder.suffix == ".csv" else args.folder / CSV_NAME
    if not csv.is_file():
        ap.error(f"no evolve.csv at {csv}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("wrote %s", plot_evolve(csv, args.fitness_weights))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
