"""The evolution sweeper: each generation draws ``population`` children from evolve.csv and launches them at once
through whatever Hydra launcher is configured (basic: one after another; joblib, submitit, ray: side by side).

The sweep folder is the state (see history): running the same command again continues it, with no child lost
or repeated (children that were running when a sweep was killed are drawn again), and sweepers on several
machines may share one folder. Each job trains as its own process (see trial).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from detector.evolve import history
from detector.evolve.genetic import GeneticSettings, child, fitness
from detector.evolve.space import SearchSpace, base_values
from detector.evolve.trial import read_result
from detector.run_config import load_hyp_file

log = logging.getLogger(__name__)
SWEEP_FILE = "evolve_sweep.yaml"  # what this folder evolves: seed, search space, base overrides


class EvolveSweeperImpl(Sweeper):
    """YOLOv5 7.0's ``--evolve`` as a Hydra sweeper (settings: conf/hydra/sweeper/evolve.yaml)."""

    def __init__(
        self, *, generations: int, population: int, space: str, seed: int | None, parent: str, top_n: int,
        mutation_prob: float, sigma: float, factor_limits: Sequence[float], fitness_weights: Sequence[float],
        trial_overrides: Sequence[str], may_differ: Sequence[str], prune: bool, prune_min_epochs: float,
        prune_min_finished: int, sweep_dir: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if int(generations) < 1 or int(population) < 1:
            raise ValueError("hydra.sweeper.generations and hydra.sweeper.population must be >= 1")
        self.generations, self.population = int(generations), int(population)
        self.space_name, self.seed = str(space), seed
        self.settings = GeneticSettings(
            parent=str(parent), top_n=int(top_n), mutation_prob=float(mutation_prob), sigma=float(sigma),
            factor_min=float(factor_limits[0]), factor_max=float(factor_limits[1]),
            fitness_weights=tuple(float(w) for w in fitness_weights),  # type: ignore[arg-type]
        )  # fmt: skip
        self.trial_overrides, self.may_differ = list(trial_overrides), tuple(may_differ)
        self.prune = (float(prune_min_epochs), int(prune_min_finished)) if prune else None
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Any]:
        assert self.config is not None and self.launcher is not None
        parsed = OverridesParser.create().parse_overrides(arguments)
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise ValueError(f"hydra/sweeper=evolve draws the hyp itself; remove the sweep overrides {sweeps}")
        folder = Path(self.config.hydra.sweep.dir)
        space = SearchSpace.load(self.space_name)
        hyp = self.config.hyp
        if self.config.get("hyp_file"):
            hyp = load_hyp_file(self.config.hyp_file, hyp)
        base = base_values(OmegaConf.to_container(hyp, resolve=True), space)
        space.check_keys(list(base))
        columns = [*history.RESULT_KEYS, *base]
        seed = self._claim(folder, space, arguments)
        total = self.generations * self.population
        log.info("evolve: %d children (%d generations x %d) in %s, seed %d", total, self.generations,
                 self.population, folder, seed)  # fmt: skip
        returns: list[Any] = []
        while True:
            drawn = self._draw(folder, space, base, columns, seed, total)
            if not drawn:
                break
            trial = self._trial_overrides(folder)
            batch = [[*arguments, *trial, "hyp_file=null", *hyp_overrides(d["hyp"])] for d in drawn]
            job_returns = self.launcher.launch(batch, initial_job_idx=drawn[0]["draw"])
            self._record(folder, columns, drawn, job_returns)
            returns.append(job_returns)
        self._finish(folder)
        return returns

    def _trial_overrides(self, folder: Path) -> list[str]:
        """The children's settings; with pruning they validate every epoch and carry the median-stopping callback."""
        if self.prune is None:
            return list(self.trial_overrides)
        keep = [o for o in self.trial_overrides if not o.startswith("trainer.check_val_every_n_epoch=")]
        node = "+callbacks.median_stop"
        settings = {"_target_": "detector.callbacks.median_stop.MedianStopping", "sweep_dir": folder.resolve(),
                    "min_epochs": self.prune[0], "min_finished": self.prune[1]}  # fmt: skip
        return [*keep, "trainer.check_val_every_n_epoch=1", *(f"{node}.{k}={v}" for k, v in settings.items())]

    def _claim(self, folder: Path, space: SearchSpace, arguments: list[str]) -> int:
        """The folder's seed; a new folder records this sweep, an existing one must be the same evolution."""
        fixed = sorted(a for a in arguments if not a.lstrip("+~").startswith(self.may_differ))
        record = {"space": {k: [float(g), float(lo), float(hi)] for k, g, lo, hi in
                            zip(space.keys, space.gains, space.lower, space.upper, strict=True)},
                  "overrides": fixed}  # fmt: skip
        with history.locked(folder):
            path = folder / SWEEP_FILE
            if path.exists():
                old = yaml.safe_load(path.read_text())
                for key in ("space", "overrides"):
                    if old.get(key) != record[key]:
                        raise ValueError(
                            f"{folder} evolves with {key} {old.get(key)}, this command has {record[key]}: "
                            "run the same command to continue it, or start another evolution with name=... "
                            "(or hydra.sweeper.sweep_dir=...)"
                        )
                if self.seed is not None and int(self.seed) != int(old["seed"]):
                    raise ValueError(f"{folder} evolves with seed {old['seed']}, this command asks for {self.seed}")
                return int(old["seed"])
            seed = int(self.seed) if self.seed is not None else secrets.randbits(32)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(yaml.safe_dump({"seed": seed, **record}, sort_keys=False))
            os.replace(tmp, path)
            return seed

    def _draw(
        self, folder: Path, space: SearchSpace, base: dict[str, float], columns: list[str], seed: int, total: int
    ) -> list[dict[str, Any]]:
        """Draw the next generation under the folder lock (none when the csv holds ``total`` rows)."""
        with history.locked(folder):
            keys, values = history.read_csv(folder / history.CSV_NAME)
            if len(values) and keys != columns:
                raise ValueError(f"{folder / history.CSV_NAME} has columns {keys}, this sweep writes {columns}")
            draws = history.read_draws(folder / history.DRAWS_NAME)
            n = min(self.population, total - len(values))
            if n <= 0:
                return []
            genes, fit = self._parents(values, columns, space)
            base_genes = np.array([base[k] for k in space.keys])
            drawn = []
            first = len([d for d in draws if "hyp" in d])
            for j in range(n):
                number = first + j
                rng = np.random.default_rng([seed, number])
                # No finished child yet: the first of the batch trains the base hyp (again, if a killed sweep
                # drew it before), the others mutate it.
                genes_j, fit_j = (base_genes[None], np.ones(1)) if genes is None and j > 0 else (genes, fit)
                vec, parents = child(genes_j, fit_j, base_genes, space, self.settings, rng)
                hyp = dict(base) | {k: float(v) for k, v in zip(space.keys, vec, strict=True)}
                drawn.append({"draw": number, "rows": len(values), "parents": parents, "hyp": hyp,
                              "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})  # fmt: skip
            history.append_draws(folder / history.DRAWS_NAME, drawn)
        return drawn

    def _parents(
        self, values: np.ndarray, columns: list[str], space: SearchSpace
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not len(values):
            return None, None
        index = [columns.index(k) for k in space.keys]
        return values[:, index], fitness(values, self.settings.fitness_weights)

    def _record(self, folder: Path, columns: list[str], drawn: list[dict[str, Any]], job_returns: list[Any]) -> None:
        """Append each child's row (a failed child: zeros, its error in the draws journal) and the best hyp."""
        rows, notes = [], []
        for d, ret in zip(drawn, job_returns, strict=True):
            results, error = [0.0] * len(history.RESULT_KEYS), None
            try:
                _ = ret.return_value  # raises the job's exception when it failed
                got = read_result(Path(ret.hydra_cfg.hydra.runtime.output_dir)) or {}
                results = [float(got.get("final", {}).get(k, 0.0)) for k in history.RESULT_KEYS]
            except Exception as e:  # a failed child is a row with fitness 0; the sweep goes on
                error = f"{type(e).__name__}: {e}"
                log.error("evolve: child %d failed: %s", d["draw"], error)
            rows.append((results, d["hyp"]))
            notes.append({"draw": d["draw"], "result": results, "error": error})
        with history.locked(folder):
            csv = folder / history.CSV_NAME
            for results, hyp in rows:
                history.append_row(csv, columns, results, hyp)
            history.append_draws(folder / history.DRAWS_NAME, notes)
            keys, values = history.read_csv(csv)
            fit = fitness(values, self.settings.fitness_weights)
            best = history.write_best(folder / history.BEST_NAME, keys, values, fit)
        log.info("evolve: %d children finished, best fitness %.5f (child %d)", len(values), fit[best], best)

    def _finish(self, folder: Path) -> None:
        csv = folder / history.CSV_NAME
        if not csv.exists():
            return
        try:
            from detector.plots.evolve import plot_evolve

            plot_evolve(csv, self.settings.fitness_weights)
        except Exception as e:  # a plot never costs the evolution
            log.warning("evolve: could not draw evolve.png: %s", e)
        log.info("evolve: best hyp in %s; train with it:\n  python -m detector.train hyp_file=%s",
                 folder / history.BEST_NAME, (folder / history.BEST_NAME).resolve())  # fmt: skip


def hyp_overrides(hyp: dict[str, float]) -> list[str]:
    """Command-line overrides setting every hyp key (``anchors`` as the float YOLOv5 evolves; the model rounds)."""
    return [f"hyp.{k}={float(v)!r}" for k, v in hyp.items()]
