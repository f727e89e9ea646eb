"""Prints images/second of the batch loop and the epoch time from bench/epoch_clock.py-style stamps (medians from the
second epoch on); with a second stamps file, also the ratio of that run's times to this one's.

    python bench/gpu/epoch_rate.py NAME STAMPS.json N_IMAGES [OTHER_STAMPS.json]
"""

from __future__ import annotations

import json
import statistics
import sys


def times(path: str) -> tuple[float, float]:
    """Median batch loop and median epoch with validation, in seconds, from the second epoch on."""
    return median_times(json.load(open(path)))


def median_times(s: dict[str, list[float]]) -> tuple[float, float]:
    """As times(), from the stamps themselves (of a run cut short too: an epoch without validation is left out)."""
    loop = statistics.median(v - a for a, v in zip(s["start"][1:], s["val_start"][1:], strict=False))
    epoch = statistics.median(b - a for a, b in zip(s["end"], s["end"][1:], strict=False))
    return loop, epoch


def main() -> None:
    name, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    loop, epoch = times(path)
    print(f"{name}: batch loop {loop:.2f} s ({n / loop:.0f} img/s), epoch with validation {epoch:.2f} s "
          f"(medians from the second epoch; {n} images)")  # fmt: skip
    if len(sys.argv) > 4:
        o_loop, o_epoch = times(sys.argv[4])
        print(f"ours / {name}: batch loop {o_loop / loop:.3f}× the time ({loop / o_loop:.2f}× the images/second), "
              f"epoch {o_epoch / epoch:.3f}× the time")  # fmt: skip


if __name__ == "__main__":
    main()
