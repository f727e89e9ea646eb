"""Evolution end to end through `python -m detector.train -m`: tiny children (1 epoch, 64 px), real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from detector.data.shapes import ensure_shapes_dataset
from detector.evolve import history
from detector.evolve.genetic import GeneticSettings, child, fitness
from detector.evolve.space import SearchSpace, base_values
from detector.evolve.trial import single_process
from tests.helpers import compose_train

TIMEOUT = 900
ROOT = Path(__file__).resolve().parents[1]  # children may import tests.helpers callbacks


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return ensure_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=16, n_val=8)


def command(data: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "detector.train", "-m", f"data={data}", "epochs=1", "imgsz=64", "batch_size=8",
            "workers=0", "trainer=cpu", "logger=csv", "callbacks.autoanchor.gen=50", *args]  # fmt: skip


def sweep_env() -> dict[str, str]:
    """The environment of a sweep under test: tests.helpers importable by its children."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def train_m(
    cwd: Path, data: Path, *args: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    cmd = command(data, *args)
    out = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, env={**sweep_env(), **(env or {})}
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def evolve_args(sweep: Path, generations: int, population: int, *extra: str) -> list[str]:
    return ["hydra/sweeper=evolve", f"hydra.sweeper.generations={generations}",
            f"hydra.sweeper.population={population}", f"hydra.sweeper.sweep_dir={sweep}", "hydra.sweeper.seed=3",
            *extra]  # fmt: skip


SETTINGS = GeneticSettings(parent="single", top_n=5, mutation_prob=0.8, sigma=0.2, factor_min=0.3, factor_max=3.0,
                           fitness_weights=(0.0, 0.0, 0.1, 0.9))  # fmt: skip


def test_tiny_evolution_writes_yolov5s_csv_continues_and_replays(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    train_m(tmp_path, tiny_data, *evolve_args(sweep, 1, 2))
    keys, values = history.read_csv(sweep / "evolve.csv")
    assert len(values) == 2
    out = train_m(tmp_path, tiny_data, *evolve_args(sweep, 3, 2))  # the same command, more generations: continues
    keys, values = history.read_csv(sweep / "evolve.csv")
    space = SearchSpace.load("yolov5")
    base = base_values(dict(compose_train().hyp), space)
    assert keys == [*history.RESULT_KEYS, *base]  # YOLOv5's columns: 7 results, then every hyp key, anchors last
    assert (sweep / "evolve.csv").read_text().splitlines()[0] == ",".join(f"{k:>20s}" for k in keys)
    assert len(values) == 6 and sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [str(i) for i in range(6)]
    genes = values[:, [keys.index(k) for k in space.keys]]
    base_vec = np.array([base[k] for k in space.keys])
    assert np.allclose(genes[0], base_vec)  # the first child trains the base hyp
    assert (genes >= space.lower).all() and (genes <= space.upper).all()
    fixed = space.gains == 0
    assert np.allclose(genes[:, fixed], base_vec[fixed])
    assert (~np.isclose(genes[1:], base_vec)).any(1).all()  # every later child differs somewhere
    assert (values[:, 4] > 0).all()  # every child validated (its val box loss is there)
    fit = fitness(values, SETTINGS.fitness_weights)
    best = yaml.safe_load((sweep / "hyp_evolve.yaml").read_text())
    assert list(best) == keys[7:]
    assert np.allclose(list(best.values()), values[int(np.argmax(fit)), 7:])
    assert (sweep / "evolve.png").stat().st_size > 0
    assert "python -m detector.train hyp_file=" in out.stdout + out.stderr
    # Replay: each recorded draw follows from the seed, its draw number and the rows it saw.
    draws = [d for d in history.read_draws(sweep / "evolve_draws.jsonl") if "hyp" in d]
    assert [d["draw"] for d in draws] == list(range(6))
    for d in draws:
        seen = genes[: d["rows"]]
        if not len(seen):
            seen, seen_fit = (None, None) if d["draw"] in (0,) else (base_vec[None], np.ones(1))
        else:
            seen_fit = fit[: d["rows"]]
        vec, _ = child(seen, seen_fit, base_vec, space, SETTINGS, np.random.default_rng([3, d["draw"]]))
        assert np.allclose(vec, [d["hyp"][k] for k in space.keys])
    # A child trained with its hyp: the job's own config has the drawn values.
    job = yaml.safe_load((sweep / "5" / "config.yaml").read_text())
    assert job["hyp"]["lr0"] == pytest.approx(draws[5]["hyp"]["lr0"]) and job["hyp_file"] is None
    assert job["trainer"]["check_val_every_n_epoch"] == 1 and job["callbacks"]["checkpoint"] is None
    assert job["trainer"]["enable_model_summary"] is False
    assert not list(sweep.rglob("*.ckpt"))  # children save nothing (Lightning adds no checkpoint of its own)
    # A different evolution in the same folder is refused, naming what differs.
    refused = train_m(tmp_path, tiny_data, *evolve_args(sweep, 3, 2), "imgsz=96", check=False)
    assert refused.returncode != 0 and "imgsz=96" in refused.stderr


def test_a_killed_sweep_continues_without_losing_or_repeating_a_child(tiny_data, tmp_path):
    sweep, flag = tmp_path / "sweep", tmp_path / "hang"
    flag.touch()  # child 1 waits at train start while this exists: it cannot finish before the sweep is killed
    hang = ("+callbacks.hang._target_=tests.helpers.HangWhile", f"+callbacks.hang.flag={flag}", "+callbacks.hang.job=1")
    cmd = command(tiny_data, *evolve_args(sweep, 2, 1, *hang))
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=sweep_env())
    deadline = time.time() + TIMEOUT
    while not (sweep / "1").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before its second child started"
    while not (sweep / "1" / "trial.pid").exists() and time.time() < deadline:
        time.sleep(0.1)
    child_pid = int((sweep / "1" / "trial.pid").read_text())
    while "AutoAnchor" not in (sweep / "1" / "train.log").read_text() and time.time() < deadline:
        time.sleep(0.1)  # child 1 is training (and waits there)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of child 1
    proc.wait()
    for _ in range(150):  # the child gets SIGTERM when its parent dies and stops within seconds
        if not Path(f"/proc/{child_pid}").exists() or "zombie" in Path(f"/proc/{child_pid}/status").read_text():
            break
        time.sleep(0.2)
    else:
        pytest.fail("the running child outlived its sweep")
    assert len(history.read_csv(sweep / "evolve.csv")[1]) == 1
    flag.unlink()
    train_m(tmp_path, tiny_data, *evolve_args(sweep, 2, 1, *hang))
    _, values = history.read_csv(sweep / "evolve.csv")
    assert len(values) == 2  # child 1 was drawn again (as draw 2), child 0 not repeated
    draws = [d["draw"] for d in history.read_draws(sweep / "evolve_draws.jsonl") if "hyp" in d]
    assert draws == [0, 1, 2]


def test_joblib_launcher_runs_two_children_at_once(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    meet = ("+callbacks.meet._target_=tests.helpers.Rendezvous", f"+callbacks.meet.folder={tmp_path / 'meet'}",
            "+callbacks.meet.n=2")  # each child waits at train start until both are there  # fmt: skip
    train_m(tmp_path, tiny_data, *evolve_args(sweep, 1, 2), "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *meet)
    a, b = (json.loads((sweep / str(i) / "results.json").read_text()) for i in range(2))
    assert "error" not in a and "error" not in b  # neither waited in vain: they ran side by side
    assert a["started"] < b["finished"] and b["started"] < a["finished"]
    assert len(history.read_csv(sweep / "evolve.csv")[1]) == 2


def test_submitit_launcher_runs_a_generation_as_two_jobs(tiny_data, tmp_path):
    """hydra/launcher=submitit_local: the submitit_slurm launcher's code path (pickled job, submitit's job process,
    its results) with local processes instead of SLURM's; no cluster here."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # optional extra: pip install 'detector[slurm]'
    sweep = tmp_path / "sweep"
    meet = ("+callbacks.meet._target_=tests.helpers.Rendezvous", f"+callbacks.meet.folder={tmp_path / 'meet'}",
            "+callbacks.meet.n=2")  # fmt: skip
    train_m(tmp_path, tiny_data, *evolve_args(sweep, 1, 2), "hydra/launcher=submitit_local",
            f"hydra.launcher.submitit_folder={tmp_path / 'submitit'}", *meet)  # fmt: skip
    a, b = (json.loads((sweep / str(i) / "results.json").read_text()) for i in range(2))
    assert "error" not in a and "error" not in b  # submitit ran the two jobs side by side
    assert a["started"] < b["finished"] and b["started"] < a["finished"]
    keys, values = history.read_csv(sweep / "evolve.csv")
    assert len(values) == 2 and np.allclose(
        values[:, 2], [a["final"]["metrics/mAP_0.5"], b["final"]["metrics/mAP_0.5"]]
    )
    assert len(list((tmp_path / "submitit").glob("*_result.pkl"))) == 2  # both went through submitit


def test_ray_launcher_runs_a_generation_on_a_local_cluster(tiny_data, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")  # optional extra: pip install 'detector[ray]'
    sweep = tmp_path / "sweep"
    meet = ("+callbacks.meet._target_=tests.helpers.Rendezvous", f"+callbacks.meet.folder={tmp_path / 'meet'}",
            "+callbacks.meet.n=2")  # fmt: skip
    train_m(tmp_path, tiny_data, *evolve_args(sweep, 1, 2), "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
            *meet)  # fmt: skip
    a, b = (json.loads((sweep / str(i) / "results.json").read_text()) for i in range(2))
    assert "error" not in a and "error" not in b  # Ray ran the two side by side
    assert a["started"] < b["finished"] and b["started"] < a["finished"]
    assert len(history.read_csv(sweep / "evolve.csv")[1]) == 2


# ours in make test; the basic and Optuna sweepers go the same way (each job one child process) and run in
# make test-all (43 s each: make test stays under 15 min)
# evolve-in-slurm: the sweep runs as one SLURM task (a submitit_slurm job: its SLURM_* variables, no SLURM here);
# Lightning, seeing SLURM_NTASKS=1, refused the child's devices=2 until such a run took Lightning's own launcher
@pytest.mark.parametrize("sweeper", [pytest.param("basic", marks=pytest.mark.slow), "evolve", "evolve-in-slurm",
                                     pytest.param("optuna", marks=pytest.mark.slow)])  # fmt: skip
def test_a_two_process_ddp_trial_inside_a_sweep_runs_once(tiny_data, tmp_path, sweeper):
    ddp = ["trainer.devices=2", "trainer.strategy=ddp", "name=ddp"]
    args = {
        "evolve": evolve_args(tmp_path / "sweep", 1, 1),
        "basic": ["seed=1"],
        "optuna": ["hydra/sweeper=optuna_evolve", "hydra.sweeper.n_trials=1"],
    }[sweeper.replace("-in-slurm", "")]
    if sweeper == "optuna":
        pytest.importorskip("optuna")
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4243", "SLURM_STEP_ID": "0",
             "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost"}  # fmt: skip
    train_m(tmp_path, tiny_data, *args, *ddp, env=slurm if sweeper.endswith("in-slurm") else None)
    if sweeper.startswith("evolve"):
        folders = [tmp_path / "sweep"]
        assert len(history.read_csv(tmp_path / "sweep" / "evolve.csv")[1]) == 1
    else:
        folders = list((tmp_path / "outputs" / "ddp" / "multirun").iterdir())
        assert len(folders) == 1, "the sweep started twice (Lightning #11300)"
    jobs = sorted(p.name for p in folders[0].iterdir() if p.is_dir())
    assert jobs == ["0"]
    for job in jobs:
        result = json.loads((folders[0] / job / "results.json").read_text())
        assert result["fitness"] >= 0 and result["final"]["metrics/mAP_0.5"] >= 0


def test_failed_children_are_rows_with_fitness_zero_and_the_sweep_goes_on(tiny_data, tmp_path):
    sweep, flag = tmp_path / "sweep", tmp_path / "hang"
    flag.touch()  # every child waits at train start while this exists, and is killed at its timeout
    hang = ("+callbacks.hang._target_=tests.helpers.HangWhile", f"+callbacks.hang.flag={flag}")
    out = train_m(tmp_path, tiny_data, *evolve_args(sweep, 2, 1), "trial_timeout=2", *hang)
    _, values = history.read_csv(sweep / "evolve.csv")
    assert values.shape[0] == 2 and (values[:, :7] == 0).all()
    notes = [d for d in history.read_draws(sweep / "evolve_draws.jsonl") if "error" in d]
    assert [n["draw"] for n in notes] == [0, 1]
    assert all("timeout of 2" in n["error"] for n in notes)
    assert "child 0 failed" in out.stdout + out.stderr


def test_a_job_run_as_several_slurm_tasks_is_refused_not_trained_twice(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"  # submitit with tasks_per_node=2 runs every job on two tasks: each would start a child
    train_m(tmp_path, tiny_data, *evolve_args(sweep, 1, 1), env={"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "train"})
    _, values = history.read_csv(sweep / "evolve.csv")
    assert values.shape[0] == 1 and (values[:, :7] == 0).all()
    (note,) = [d for d in history.read_draws(sweep / "evolve_draws.jsonl") if "error" in d]
    assert "runs as 2 SLURM tasks" in note["error"] and "tasks_per_node=1" in note["error"]
    assert not (sweep / "0" / "results.json").exists()  # no child trained


def test_only_one_device_one_node_jobs_count_as_single_process():
    assert single_process({"devices": 1, "strategy": "auto", "num_nodes": 1}, gpus=4)
    assert single_process({"devices": [0], "strategy": "auto", "num_nodes": 1}, gpus=4)
    assert not single_process({"devices": 2, "strategy": "auto", "num_nodes": 1}, gpus=4)
    assert not single_process({"devices": "auto", "strategy": "auto", "num_nodes": 1}, gpus=2)  # every GPU
    assert single_process({"devices": "auto", "strategy": "auto", "num_nodes": 1}, gpus=1)
    assert single_process({"devices": "auto", "strategy": "auto", "num_nodes": 1}, gpus=0)  # the CPU
    assert single_process({"accelerator": "cpu", "devices": "auto", "strategy": "auto", "num_nodes": 1}, gpus=2)
    assert not single_process({"devices": 1, "strategy": "ddp", "num_nodes": 1}, gpus=0)
    assert not single_process({"devices": 1, "strategy": "auto", "num_nodes": 2}, gpus=0)
