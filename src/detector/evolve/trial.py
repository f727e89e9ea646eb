"""One process per sweep job: a multirun job re-runs itself as a plain ``python -m detector.train`` run.

Any sweeper (basic, evolve, Optuna) on any launcher calls the task function once per job. Training inside that
call would share the sweep's process (a crash, a leak or a hung loader takes the sweep down) and, with
``trainer.devices>1``, Lightning's DDP launcher would re-execute the whole ``-m`` command on every rank, starting
the sweep again per rank (Lightning issue #11300). So the job starts a child in single-run mode with the job's
overrides and folder, in its own session (its DDP ranks with it), and returns the fitness the child wrote.

A fresh Python spends ~8 s importing torch, torchvision and Lightning (2 CPU cores), which YOLOv5's in-process
``--evolve`` pays once. With ``trial_preload`` a single-process child is forked from a forkserver that imported
``detector.train`` once per sweep process (multiprocessing's forkserver: the server is a fresh interpreter, so
nothing of the sweep's state leaks into the child), and trains with the config the launcher composed for the job
instead of composing it again; DDP children (several devices or nodes) always start fresh, since Lightning
re-executes their command line for the other ranks.
"""

from __future__ import annotations

import copy
import ctypes
import json
import logging
import multiprocessing
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
PID_FILE = "trial.pid"  # the job's training process (the leader of its process group)
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


def child_args(hc: Any) -> list[str]:
    """The arguments of this multirun job as a single run: same config source and overrides, the job's folder."""
    args = [f"--config-name={hc.job.config_name}"]
    for source in hc.runtime.config_sources:
        if source.schema != "file":
            continue
        if source.provider == "main":
            args.append(f"--config-path={source.path}")
        elif source.provider == "command-line":
            args.append(f"--config-dir={source.path}")
    args += [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(SWEEP_ONLY)]
    args += list(hc.overrides.task)
    return [*args, f"hydra.run.dir={hc.runtime.output_dir}"]


def single_process(trainer: Mapping[str, Any], gpus: int) -> bool:
    """Whether a Trainer config (plain containers) runs one process, no DDP ranks to launch: one device, one node.

    ``gpus``: GPUs this process sees. ``devices=auto`` is Lightning's choice: every GPU where the accelerator may
    use them, else one device (the CPU), so the default trainer's jobs are preloaded on a CPU or one-GPU machine."""
    devices, strategy = trainer.get("devices"), str(trainer.get("strategy", "auto"))
    if devices == "auto":
        uses_gpus = str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") and gpus > 0
        devices = gpus if uses_gpus else 1
    one = devices in (1, "1") or (isinstance(devices, (list, tuple)) and len(devices) == 1)
    return one and int(trainer.get("num_nodes", 1)) == 1 and "ddp" not in strategy


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU torch counts."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def job_gpus(job_num: int, trainer: Mapping[str, Any], visible: list[str]) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for sweep job ``job_num``: its own ``devices`` GPUs, round robin over the visible
    ones, so that jobs a parallel launcher runs side by side (joblib) do not all train on the first GPU. None (leave
    the environment alone) for CPU training, explicit device lists, ``devices=-1``/``auto``, or no GPU."""
    accelerator, devices = str(trainer.get("accelerator", "auto")), trainer.get("devices", "auto")
    if accelerator not in ("auto", "gpu", "cuda") or not visible:
        return None
    try:
        count = int(devices)
    except (TypeError, ValueError):  # a list of indices or "auto"
        return None
    if count < 1 or count >= len(visible):
        return None
    start = (job_num * count) % len(visible)
    return ",".join(visible[(start + i) % len(visible)] for i in range(count))


def run_in_child(
    trainer: Mapping[str, Any], timeout_s: float | None, preload: bool, pin_gpus: bool = True, cfg: Any = None
) -> float:
    """Run this multirun job as its own process; returns the fitness it reports, raises TrialFailed.

    With ``pin_gpus`` the child sees only its own GPUs (:func:`job_gpus`). ``cfg``: the job's composed config; a
    preloaded child then trains with it instead of composing it again from the command line (~0.5 s a child)."""
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    tasks = os.environ.get("SLURM_NTASKS", "1")
    if tasks != "1":  # every task would start its own copy of the child
        raise TrialFailed(
            f"job {hc.job.num} runs as {tasks} SLURM tasks; a sweep job must be one task (submitit: "
            "hydra.launcher.tasks_per_node=1, its default): its child starts the DDP ranks itself"
        )
    (out / RESULT_FILE).unlink(missing_ok=True)
    args = child_args(hc)
    visible = visible_gpus(os.environ)
    warm = preload and single_process(trainer, len(visible))
    gpus = job_gpus(int(hc.job.num), trainer, visible) if pin_gpus else None
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus} if gpus is not None else None
    log.info("job %s (%s process%s): python -m detector.train %s", hc.job.num, "preloaded" if warm else "new",
             f", GPUs {gpus}" if gpus is not None else "", " ".join(args))  # fmt: skip
    job = _job_config(cfg) if warm and cfg is not None else None
    child = _Preloaded(args, hc.runtime.cwd, env, job) if warm else _Fresh(args, hc.runtime.cwd, env)
    (out / PID_FILE).write_text(f"{child.proc.pid}\n")
    try:
        rc = child.wait(timeout_s)
    except BaseException:  # Ctrl-C or the sweep being stopped: take the child's whole process group along
        child.kill()
        raise
    if rc is None:
        child.kill()
        raise TrialFailed(f"job {hc.job.num} ran past its timeout of {timeout_s} s and was killed; log in {out}")
    result = read_result(out) or {}
    if rc != 0 or "fitness" not in result:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        error = result.get("error") or child.last_line() or "no error message"
        raise TrialFailed(f"job {hc.job.num} {how}: {error} (log in {out})")
    return float(result["fitness"])


class _Fresh:
    """``python -m detector.train ARGS`` in its own session; its stderr is copied through and its tail kept."""

    def __init__(self, args: list[str], cwd: str, env: Mapping[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "detector.train", *args]
        self.proc = subprocess.Popen(cmd, cwd=cwd, preexec_fn=_own_session, stderr=subprocess.PIPE, env=env)
        self.tail = _Tail(self.proc.stderr)
        self.tail.start()

    def wait(self, timeout_s: float | None) -> int | None:
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self.tail.join(timeout=5)
        return rc

    def kill(self) -> None:
        _kill_group(self.proc.pid, lambda t: _waited(self.proc, t))

    def last_line(self) -> str:
        return (self.tail.text.strip().splitlines() or [""])[-1]


class _Preloaded:
    """The same run forked from the preloaded forkserver (its output goes straight to the sweep's console)."""

    def __init__(self, args: list[str], cwd: str, env: Mapping[str, str] | None = None, job: Any = None) -> None:
        self.proc = _forkserver().Process(target=_preloaded_main, args=(args, cwd, env, job), daemon=False)
        self.proc.start()

    def wait(self, timeout_s: float | None) -> int | None:
        self.proc.join(timeout_s)
        return self.proc.exitcode

    def kill(self) -> None:
        _kill_group(self.proc.pid, lambda t: self.proc.join(t) or self.proc.exitcode is not None)

    def last_line(self) -> str:
        return ""


def _forkserver() -> Any:
    """This process's forkserver context, preloading detector.train (started on first use). Inside a joblib
    worker the process's start method is loky's, which the child must be able to name: its module is preloaded."""
    ctx = multiprocessing.get_context("forkserver")
    current = type(multiprocessing.get_context()).__module__
    context_module = [current] if current != "multiprocessing.context" else []
    ctx.set_forkserver_preload([*context_module, "detector.evolve.preload"])
    return ctx


def _job_config(cfg: Any) -> tuple[Any, dict[str, Any]]:
    """The job as the launcher composed it, for a preloaded child: its task config and its ``hydra`` node in
    single-run mode. The node travels as plain containers: a launcher's typed settings (its plugin's dataclass,
    loaded by Hydra's plugin scan) do not pickle into another process."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(HydraConfig.get(), resolve=False)
    node["mode"] = RunMode.RUN
    return cfg, node


def _run_job(task: Any, node: dict[str, Any]) -> None:
    """Train with a job from :func:`_job_config`: what Hydra's run_job does for a single run whose config and folder
    exist (the launcher composed and saved them): Hydra's resolvers and state, the job's log file and environment."""
    from hydra.conf import HydraConf
    from hydra.core.utils import configure_log, setup_globals
    from omegaconf import OmegaConf, open_dict, read_write

    from detector.train import train_job

    setup_globals()  # Hydra's resolvers (hydra:, now:), as hydra.main registers them
    job = copy.deepcopy(task)
    with read_write(job), open_dict(job):
        schema = OmegaConf.structured(HydraConf)
        OmegaConf.set_struct(schema, False)  # the composed node has keys of its own (env, plugins' settings)
        job.hydra = OmegaConf.merge(schema, node)
    HydraConfig.instance().set_config(job)
    configure_log(job.hydra.job_logging, job.hydra.verbose)
    os.environ.update({str(k): str(v) for k, v in job.hydra.job.env_set.items()})
    train_job(task)


def _preloaded_main(args: list[str], cwd: str, env: Mapping[str, str] | None = None, job: Any = None) -> None:
    """In the forked child: a single run of ``python -m detector.train ARGS`` (Hydra reads sys.argv), or of the
    job config the sweep composed (``job``, from :func:`_job_config`)."""
    _own_session()
    _release_forkserver()
    if env is not None:  # before anything initialises CUDA (the forkserver imported torch but never used a GPU)
        os.environ.clear()
        os.environ.update(env)
    multiprocessing.set_start_method(None, force=True)  # the platform default again, as in a new python
    os.chdir(cwd)
    sys.argv = ["detector.train", *args]
    from detector.train import main

    code = 0
    try:
        main() if job is None else _run_job(*job)
    except SystemExit as e:  # Hydra exits 1 after reporting an error
        code = e.code if isinstance(e.code, int) else 1
    sys.exit(code)  # multiprocessing runs its finalizers, then os._exit: no interpreter teardown (seconds with torch)


def _release_forkserver() -> None:
    """In a child forked by the forkserver: close the server's liveness pipe, which multiprocessing hands every such
    child (so that it could ask the same server for children of its own; ours never do). While a child held it, a
    killed sweep left the server running, and with it the child, whose PR_SET_PDEATHSIG watches the server."""
    from multiprocessing import forkserver

    server = forkserver._forkserver  # multiprocessing's own singleton: no public API releases it
    if server._forkserver_alive_fd is not None and server._forkserver_pid is None:  # a child, not the sweep
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = server._forkserver_address = None


def _waited(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


class _Tail(threading.Thread):
    """Copies a stream to our stderr as it comes and keeps its last 4 kB (the child's error message)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)  # started by the caller
        self.stream, self.text = stream, ""

    def run(self) -> None:
        for chunk in iter(lambda: self.stream.read1(4096), b""):
            text = chunk.decode(errors="replace")
            sys.stderr.write(text)
            sys.stderr.flush()
            self.text = (self.text + text)[-4096:]


def _own_session() -> None:
    """In the child: its own session (so its DDP ranks can be signalled as a group) and, on Linux, SIGTERM when
    its parent dies, even by SIGKILL (PR_SET_PDEATHSIG), so no trial outlives its sweep."""
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _kill_group(pid: int, wait) -> None:
    """SIGTERM to the child's process group, SIGKILL after 10 s."""
    for sig, seconds in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if wait(seconds):
            return
