"""Run folders: a live run's lock, and the folder a run writes to (a resumed run continues its own).

A run holds an exclusive ``flock`` on ``run.lock`` in its folder while it trains; the kernel drops it when the
process ends, SIGKILL included, so ``ckpt_path=last`` can tell a live run from a killed one without heartbeats.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO

LOCK_FILE = "run.lock"
RESOLVER = "detector.run_folder"  # hydra.run.dir in conf/train.yaml


class RunFolderError(ValueError):
    """No run to resume, or the one named is still running; the message says which."""


def is_live(run_dir: str | Path) -> bool:
    """True while another process holds the run's lock (this process's own run is not live to itself)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return False
    with path.open("a+") as f:
        f.seek(0)
        if f.read().strip() == str(os.getpid()):
            return False
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


class RunLock:
    """Holds ``run.lock`` of ``run_dir`` (exclusive) until ``release``; a second holder is refused."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            pid = self._file.read().strip() or "?"
            self._file.close()
            self._file = None
            raise RunFolderError(f"{self.path.parent} is in use by a live run (pid {pid})") from None
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def checkpoint_run_dir(ckpt: str | Path) -> Path | None:
    """The run folder a ``<run>/weights/*.ckpt`` belongs to (it holds config.yaml), else None."""
    run_dir = Path(ckpt).resolve().parent.parent
    if Path(ckpt).resolve().parent.name == "weights" and (run_dir / "config.yaml").is_file():
        return run_dir
    return None


def last_checkpoint(runs_root: str | Path) -> Path:
    """The newest ``weights/last.ckpt`` of the runs under ``runs_root`` (one run name) that are not running."""
    root = Path(runs_root)
    found = sorted(root.glob("*/weights/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        raise RunFolderError(f"ckpt_path=last: no run under {root.resolve()} has weights/last.ckpt")
    for ckpt in found:
        if not is_live(ckpt.parent.parent):
            return ckpt
    raise RunFolderError(
        f"ckpt_path=last: every run under {root.resolve()} with a last.ckpt is still running "
        f"({', '.join(str(c.parent.parent) for c in found)}); resume one with ckpt_path=path/to/last.ckpt once it stops"
    )


def resolve_checkpoint(ckpt_path: str | None, runs_root: str | Path, own_run: Path | None = None) -> Path | None:
    """``ckpt_path`` as a file: None, ``last`` (see ``last_checkpoint``) or a path that must exist and not belong to
    a live run. ``own_run``: the folder this process's own run holds the lock of (DDP ranks > 0): ``last`` is its
    last.ckpt, and its lock is not another run's."""
    if ckpt_path in (None, "", "null", "None"):
        return None
    if ckpt_path == "last":
        if own_run is not None and (own_run / "weights" / "last.ckpt").is_file():
            return own_run / "weights" / "last.ckpt"
        return last_checkpoint(runs_root)
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise RunFolderError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    run_dir = checkpoint_run_dir(path)
    if run_dir is not None and is_live(run_dir) and run_dir != (own_run.resolve() if own_run else None):
        raise RunFolderError(f"ckpt_path={ckpt_path}: its run {run_dir} is still running")
    return path


def run_folder(ckpt_path: str | None, runs_root: str, stamp: str, env: Mapping[str, str] | None = None) -> str:
    """``hydra.run.dir``: the resumed run's own folder, else a new ``runs_root/stamp`` (also when the checkpoint
    cannot be resumed: the run then stops with the reason, a message instead of a traceback from config setup).

    When a launcher started every rank (torchrun, srun), the ranks must agree on one folder: under torchrun rank 0
    decides and publishes it in the launcher's store; under SLURM the stamp is the job and step id."""
    env = os.environ if env is None else env
    store = _launcher_store(env)
    key = f"detector/run_dir/{env.get('TORCHELASTIC_RUN_ID')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if store is not None and int(env.get("RANK", 0)) > 0:
        return store.get(key).decode()
    if store is None and int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_JOB_ID" in env:
        stamp = f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', 0)}"
    try:
        ckpt = resolve_checkpoint(ckpt_path, runs_root)
    except RunFolderError:
        ckpt = None
    run_dir = checkpoint_run_dir(ckpt) if ckpt is not None else None
    folder = str(run_dir) if run_dir is not None else f"{runs_root}/{stamp}"
    if store is not None:
        store.set(key, folder)
    return folder


def _launcher_store(env: Mapping[str, str]):
    """torchrun's agent store (a TCPStore client), when torchrun started this process among others; else None."""
    if "TORCHELASTIC_RUN_ID" not in env or int(env.get("WORLD_SIZE", 1)) <= 1:
        return None
    if env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None  # no store runs before init_process_group; the ranks may then pick different folders
    from datetime import timedelta

    from torch.distributed import TCPStore

    # rank 0 may spend minutes before it decides (a dataset scan in config setup is not one, but be generous)
    return TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=30))


def register_resolver() -> None:
    """Make ``${detector.run_folder:CKPT_PATH,RUNS_ROOT,STAMP}`` available to configs (idempotent)."""
    from omegaconf import OmegaConf

    # use_cache: Hydra reads hydra.run.dir again after the run took its lock (Lightning's DDP launch passes it to
    # the other ranks); the folder is decided once per process, as Hydra's own ${now:} is.
    OmegaConf.register_new_resolver(
        RESOLVER, lambda ckpt, root, stamp: run_folder(None if ckpt is None else str(ckpt), str(root), str(stamp)),
        replace=True, use_cache=True,
    )  # fmt: skip
