"""The evolution's state in its sweep folder, shared by every sweeper that points at it.

``evolve.csv`` (YOLOv5's layout: 7 result columns, then every hyp key; each field ``%20s`` in the header and
``%20.5g`` in rows, comma-separated) holds one row per finished child. ``evolve_draws.jsonl`` records every child
drawn (draw number, the rows it saw, its parents and genes), so a sweep can be replayed and cooperating sweepers
never draw the same child twice. ``hyp_evolve.yaml`` is the best row as a hyp file. Writers hold ``evolve.lock``
(an exclusive ``flock``), so sweepers on several machines may share one folder on a common file system.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

RESULT_KEYS = (
    "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
    "val/box_loss", "val/obj_loss", "val/cls_loss",
)  # fmt: skip
CSV_NAME, DRAWS_NAME, LOCK_NAME, BEST_NAME = "evolve.csv", "evolve_draws.jsonl", "evolve.lock", "hyp_evolve.yaml"


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the folder's exclusive lock (blocks until other sweepers release it)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def format_header(keys: Sequence[str]) -> str:
    return ",".join(f"{k:>20s}" for k in keys) + "\n"


def format_row(values: Sequence[float]) -> str:
    return ",".join(f"{float(v):20.5g}" for v in values) + "\n"


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """(column names, (rows, columns) values) of an evolve.csv; no rows when the file is missing."""
    if not path.exists():
        return [], np.zeros((0, 0))
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        return [], np.zeros((0, 0))
    keys = [k.strip() for k in lines[0].split(",")]
    rows = []
    for i, line in enumerate(lines[1:], 2):
        fields = line.split(",")
        if len(fields) != len(keys):  # a row cut by a kill mid-write: the child is drawn again
            continue
        try:
            rows.append([float(v) for v in fields])
        except ValueError as e:
            raise ValueError(f"{path}, line {i}: {e}") from e
    return keys, np.array(rows, float).reshape(len(rows), len(keys))


def append_row(path: Path, keys: Sequence[str], results: Sequence[float], hyp: Mapping[str, float]) -> None:
    """Append one child (its 7 results, then its hyp in ``keys`` order after the result columns); writes the
    header first in a new file. The caller holds the lock."""
    columns = list(keys)
    if path.exists() and path.stat().st_size:
        existing, _ = read_csv(path)
        if existing != columns:
            raise ValueError(f"{path} has columns {existing}, this sweep writes {columns}")
        text = ""
    else:
        text = format_header(columns)
    text += format_row([*results, *(hyp[k] for k in columns[len(RESULT_KEYS) :])])
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_draws(path: Path) -> list[dict[str, Any]]:
    """Every recorded draw (a line cut by a kill is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def append_draws(path: Path, draws: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(d) + "\n" for d in draws))
        f.flush()
        os.fsync(f.fileno())


def write_best(path: Path, keys: Sequence[str], values: np.ndarray, fit: np.ndarray) -> int:
    """Rewrite hyp_evolve.yaml from the best row (the first maximum of ``fit``); returns its row index."""
    best = int(np.argmax(fit))
    n = len(RESULT_KEYS)
    hyp = {k: float(v) for k, v in zip(keys[n:], values[best, n:], strict=True)}
    header = (
        "# Hyperparameter evolution results (YOLOv5 7.0's genetic algorithm)\n"
        f"# Best generation: {best}\n"
        f"# Last generation: {len(values) - 1}\n"
        f"# {', '.join(k.strip() for k in keys[:n])}\n"
        f"# {', '.join(f'{v:.5g}' for v in values[best, :n])}\n\n"
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + yaml.safe_dump(hyp, sort_keys=False))
    os.replace(tmp, path)
    return best
