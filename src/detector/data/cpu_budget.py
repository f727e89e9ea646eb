"""How many CPUs a training process may use, and how its data loading shares them: loader workers (YOLOv5's rule)
and the threads each worker, or the main process, decodes and augments with."""

from __future__ import annotations

import math
import os
from pathlib import Path

MAX_AUTO_WORKERS = 8  # YOLOv5's --workers default: the cap of workers=auto


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity mask (``taskset``, SLURM's binding), capped by the cgroup's CPU
    quota (containers, SLURM's cgroups) where one is set. ``os.cpu_count()`` counts the machine's instead."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this OS
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs the cgroup's quota allows (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None: no
    quota or no cgroup file readable."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def rank_cpus(local_ranks: int, cpus: int | None = None) -> int:
    """One rank's share of the CPUs when ``local_ranks`` training processes share this machine (at least 1)."""
    return max(1, (usable_cpus() if cpus is None else cpus) // max(1, local_ranks))


def loader_workers(setting: int | str, batch: int, cpus: int, scale: int = 1) -> int:
    """DataLoader workers of one rank, YOLOv5's rule: min(the rank's CPUs, its batch (none for a batch of 1), the
    cap), the cap being ``setting`` (``auto``: 8, YOLOv5's default) times ``scale`` (validation: 2, as YOLOv5)."""
    cap = MAX_AUTO_WORKERS if str(setting) == "auto" else int(setting)
    return min(cpus, batch if batch > 1 else 0, cap * scale)


def threads_per_loader(cpus: int, num_workers: int) -> int:
    """Threads each loader worker (or, with none, the main process) builds samples with: the rank's CPUs split among
    its workers, so that all of them together never use more than the rank's share."""
    return max(1, cpus // max(1, num_workers))


def setup_threads() -> int:
    """Threads of the one-off work before training (label checks, disk cache): one CPU left free, at most 8."""
    return max(1, min(MAX_AUTO_WORKERS, usable_cpus() - 1))
