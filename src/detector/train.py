"""`python -m detector.train`: compose the config, build data, model, callbacks and Trainer, fit, return fitness."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import get_original_cwd, instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from detector import CONF_DIR
from detector.data.config import DataConfig, load_data_config
from detector.data.datamodule import DetectorDataModule
from detector.evolve.history import RESULT_KEYS
from detector.evolve.trial import in_multirun, run_in_child, write_result
from detector.module import DetectorModule
from detector.rank_logging import filter_to_rank_zero
from detector.run_config import prepare_config, resolve_ckpt_path

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a name -> {_target_: ...} mapping; null entries are skipped."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and node.get("_target_")]


def build_datamodule(cfg: DictConfig, data: DataConfig, stride: int, **overrides: Any) -> DetectorDataModule:
    """The ``datamodule`` node instantiated with the run's data config and the model's largest stride."""
    # _partial_: runtime objects (the DataConfig dataclass) must not pass through OmegaConf.
    build = instantiate(cfg.datamodule, _partial_=True, _recursive_=False, _convert_="all")
    return build(data=data, stride=stride, **overrides)


def build_module(cfg: DictConfig, nc: int, names: dict[int, str]) -> DetectorModule:
    """The ``module`` node instantiated with the dataset's class count and names (plain containers throughout)."""
    return instantiate(cfg.module, _partial_=True, _recursive_=False, _convert_="all")(nc=nc, names=dict(names))


def run(cfg: DictConfig) -> float:
    """Train with a composed config; returns the best fitness (0.1 mAP@0.5 + 0.9 mAP@0.5:0.95). The run folder's
    results.json gets the final epoch's metrics and that fitness, or the error that stopped the run."""
    filter_to_rank_zero()
    cfg = prepare_config(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _fit(cfg, run_dir)
    except Exception as e:
        if rank_zero_only.rank == 0:
            write_result(run_dir, {"error": f"{type(e).__name__}: {e}"})
        raise


def _fit(cfg: DictConfig, run_dir: Path) -> float:
    started = time.time()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)

    try:
        cwd = get_original_cwd()
    except ValueError:  # composed without @hydra.main (tests)
        cwd = str(Path.cwd())
    data = load_data_config(cfg.data, cfg.datasets_dir, cwd)
    nc, names = (1, {0: data.names[0] if data.nc == 1 else "item"}) if cfg.single_cls else (data.nc, data.names)
    module = build_module(cfg, nc, names)
    datamodule = build_datamodule(cfg, data, stride=int(module.model.stride.max()))

    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = L.Trainer(
        **trainer_kwargs,
        callbacks=instantiate_group(cfg.callbacks),
        logger=instantiate_group(cfg.get("logger")) or False,
        default_root_dir=str(run_dir),
    )
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, Path(cwd) / "outputs")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    best_ckpt = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None) == "fitness"), None)
    best = best_ckpt.best_model_score if best_ckpt is not None else None
    best_fitness = float(best) if best is not None else float(trainer.callback_metrics.get("fitness", 0.0))
    if trainer.is_global_zero:
        final = {
            k: float(trainer.callback_metrics[k]) for k in (*RESULT_KEYS, "fitness") if k in trainer.callback_metrics
        }
        write_result(run_dir, {"fitness": best_fitness, "final": final, "epochs": trainer.current_epoch,
                               "started": started, "finished": time.time()})  # fmt: skip
    log.info("Results saved to %s (best fitness %.4f)", run_dir, best_fitness)
    return best_fitness


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    if in_multirun():  # every -m job trains as its own process (detector/evolve/trial.py says why)
        return run_in_child(OmegaConf.to_container(cfg.trainer, resolve=True), cfg.trial_timeout, cfg.trial_preload)
    return run(cfg)


if __name__ == "__main__":
    main()
