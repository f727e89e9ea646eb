"""One process per sweep job: a multirun job re-runs itself as a plain ``python -m detector.train`` run.

Any sweeper (basic, evolve, Optuna) on any launcher calls the task function once per job. Training inside that
call would share the sweep's process (a crash, a leak or a hung loader takes the sweep down) and, with
``trainer.devices>1``, Lightning's DDP launcher would re-execute the whole ``-m`` command on every rank, starting
the sweep again per rank (Lightning issue #11300). So the job starts a child in single-run mode with the job's
overrides and folder, in its own session (its DDP ranks with it), and returns the fitness the child wrote.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

log = logging.getLogger(__name__)

RESULT_FILE = "results.json"  # what a run leaves for its sweep: final metrics, fitness, or the error
# Hydra overrides the child must not see: it runs one job in single-run mode in the job's folder.
SWEEP_ONLY = ("hydra/sweeper", "hydra.sweeper", "hydra/launcher", "hydra.launcher", "hydra.sweep", "hydra.run",
              "hydra.mode", "hydra.job.num", "hydra.job.id")  # fmt: skip


class TrialFailed(RuntimeError):
    """The child process of a sweep job failed; the message says how and where its log is."""


def in_multirun() -> bool:
    """True inside a Hydra multirun job (the task function called by a sweeper's launcher)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def write_result(run_dir: Path, record: Mapping[str, Any]) -> None:
    """results.json in the run folder, written atomically."""
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(dict(record), indent=1))
    os.replace(tmp, run_dir / RESULT_FILE)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def child_command(hc: Any) -> list[str]:
    """The single-run command of this multirun job: same config source and overrides, the job's folder."""
    cmd = [sys.executable, "-m", "detector.train", f"--config-name={hc.job.config_name}"]
    for source in hc.runtime.config_sources:
        if source.schema != "file":
            continue
        if source.provider == "main":
            cmd.append(f"--config-path={source.path}")
        elif source.provider == "command-line":
            cmd.append(f"--config-dir={source.path}")
    cmd += [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(SWEEP_ONLY)]
    cmd += list(hc.overrides.task)
    return [*cmd, f"hydra.run.dir={hc.runtime.output_dir}"]


def run_in_child(timeout_s: float | None = None) -> float:
    """Run this multirun job as its own process; returns the fitness it reports, raises TrialFailed."""
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    (out / RESULT_FILE).unlink(missing_ok=True)
    cmd = child_command(hc)
    log.info("job %s: %s", hc.job.num, " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, cwd=hc.runtime.cwd, preexec_fn=_own_session, stderr=subprocess.PIPE)
    tail = _forward(proc.stderr)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        _kill(proc)
        raise TrialFailed(f"job {hc.job.num} ran past its timeout of {timeout_s} s and was killed; log in {out}") from e
    except BaseException:  # Ctrl-C or the sweep being stopped: take the child's whole process group along
        _kill(proc)
        raise
    finally:
        tail.join(timeout=5)
    result = read_result(out) or {}
    if rc != 0 or "fitness" not in result:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        error = result.get("error") or (tail.text.strip().splitlines() or ["no output"])[-1]
        raise TrialFailed(f"job {hc.job.num} {how}: {error} (log in {out})")
    return float(result["fitness"])


class _Tail(threading.Thread):
    """Copies a stream to our stderr as it comes and keeps its last 4 kB (the child's error message)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream, self.text = stream, ""

    def run(self) -> None:
        for chunk in iter(lambda: self.stream.read1(4096), b""):
            text = chunk.decode(errors="replace")
            sys.stderr.write(text)
            sys.stderr.flush()
            self.text = (self.text + text)[-4096:]


def _forward(stream: Any) -> _Tail:
    t = _Tail(stream)
    t.start()
    return t


def _own_session() -> None:
    """In the child before exec: its own session (so its DDP ranks can be signalled as a group) and, on Linux,
    SIGTERM when the sweep process dies, even by SIGKILL (PR_SET_PDEATHSIG), so no trial outlives its sweep."""
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM to the child's process group, SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
