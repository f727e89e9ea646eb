"""`python -m detector.train`: compose the config, build data, model, callbacks and Trainer, fit, return fitness."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, instantiate
from lightning.fabric.plugins.environments import ClusterEnvironment, LightningEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from detector import CONF_DIR
from detector.amp_check import PrecisionAgreement, checked_precision
from detector.checkpoint_file import CheckpointError
from detector.checkpoint_io import AtomicCheckpointIO
from detector.console import exit_on_user_error, quiet_third_party
from detector.data.config import DataConfig, load_data_config
from detector.data.datamodule import DetectorDataModule
from detector.evolve.history import RESULT_KEYS
from detector.evolve.trial import in_multirun, run_in_child, single_process, visible_gpus, write_result
from detector.module import DetectorModule
from detector.rank_logging import filter_to_rank_zero
from detector.resume import CONFIG_KEY, ResumeRefused, StoreRunConfig, restore_config
from detector.run_config import ConfigError, prepare_config
from detector.run_folder import RunLock, checkpoint_run_dir, register_resolver, resolve_checkpoint
from detector.weights_transfer import transfer_weights

log = logging.getLogger(__name__)
USER_ERRORS = (
    ConfigError,
    CheckpointError,
    ResumeRefused,
    FileNotFoundError,
)  # what main reports as one line (HYDRA_FULL_ERROR=1: trace)
register_resolver()  # ${detector.run_folder:...} in hydra.run.dir: a resumed run continues in its own folder


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


def run(cfg: DictConfig, overrides: list[str] | None = None) -> float:
    """Train with a composed config; returns the best fitness (0.1 mAP@0.5 + 0.9 mAP@0.5:0.95). The run folder's
    results.json gets the final epoch's metrics and that fitness, or the error that stopped the run.

    With ``ckpt_path`` the run resumes: the checkpoint's config comes back, and ``overrides`` (the command line's,
    by default) may change only the keys in ``resume_may_differ``."""
    filter_to_rank_zero()
    quiet_third_party()
    cwd = _original_cwd()
    if rank_zero_only.rank == 0:
        ckpt = resolve_checkpoint(cfg.ckpt_path, Path(cwd) / "outputs" / cfg.name)
    else:  # a DDP rank started by rank 0, which holds the run's lock and chose the run folder (hydra.run.dir)
        ckpt = resolve_checkpoint(cfg.ckpt_path, Path(cwd) / "outputs" / cfg.name, own_run=Path(cfg.run_dir))
    state = stored = None
    if ckpt is not None:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        stored = state.get(CONFIG_KEY)
        if stored is None:
            log.warning("%s holds no run config (an older or foreign checkpoint): resuming with this config", ckpt)
        else:
            if overrides is None:
                overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
            cfg = restore_config(cfg, stored, overrides)
    cfg = prepare_config(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    finished = _finished_run(ckpt, state, int(cfg.epochs))
    del state
    if finished is not None:
        return finished
    lock = RunLock(run_dir) if rank_zero_only.rank == 0 else None
    try:
        return _fit(cfg, run_dir, cwd, ckpt)
    except Exception as e:
        if rank_zero_only.rank == 0:
            write_result(run_dir, {"error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        if lock is not None:
            lock.release()


def _original_cwd() -> str:
    try:
        return get_original_cwd()
    except ValueError:  # composed without @hydra.main (tests)
        return str(Path.cwd())


def _finished_run(ckpt: Path | None, state: dict[str, Any] | None, epochs: int) -> float | None:
    """The best fitness of the checkpoint's run when it has nothing left to train (all ``epochs`` done, or early
    stopping's patience used up), else None."""
    if state is None:
        return None
    done = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed", 0)
    stopped = any(
        isinstance(c, dict) and "wait_count" in c and 0 < c.get("patience", 0) <= c["wait_count"]
        for c in state.get("callbacks", {}).values()
    )
    if done < epochs and not stopped:
        return None
    callbacks = [c for c in state.get("callbacks", {}).values() if isinstance(c, dict)]
    best = [c["best_model_score"] for c in callbacks if c.get("monitor") == "fitness" and c.get("best_model_score")]
    run_dir = checkpoint_run_dir(ckpt) or ckpt
    log.info("%s finished training (%d of %d epochs): nothing to resume", run_dir, done, epochs)
    return float(best[0]) if best else 0.0


def _fit(cfg: DictConfig, run_dir: Path, cwd: str, ckpt: Path | None) -> float:
    started = time.time()
    cfg.trainer.precision = checked_precision(str(cfg.trainer.precision), cfg.trainer, cfg.amp_check)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)

    data = load_data_config(cfg.data, cfg.datasets_dir, cwd)
    nc, names = (1, {0: data.names[0] if data.nc == 1 else "item"}) if cfg.single_cls else (data.nc, data.names)
    module = build_module(cfg, nc, names)
    if cfg.weights and ckpt is None:  # a resumed run has its checkpoint's weights
        keep_anchors = not module.model.placeholder_anchors  # hyp.anchors asks AutoAnchor for new ones
        weights = Path(cwd) / Path(str(cfg.weights)).expanduser()
        transfer_weights(module.model, weights, str(cfg.model.get("name")), keep_anchors)
    datamodule = build_datamodule(cfg, data, stride=int(module.model.stride.max()))

    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    plugins = _plugins(trainer_kwargs.pop("plugins", None), trainer_kwargs)
    trainer_kwargs["strategy"] = resolve_strategy(trainer_kwargs, float(cfg.ddp_timeout))
    callbacks = console_callbacks(instantiate_group(cfg.callbacks), trainer_kwargs)  # may set a trainer flag
    trainer = L.Trainer(
        **trainer_kwargs,
        callbacks=[*callbacks, StoreRunConfig(OmegaConf.to_container(cfg, resolve=True)), PrecisionAgreement()],
        logger=instantiate_group(cfg.get("logger")) or False,
        default_root_dir=str(run_dir),
        plugins=plugins,
    )
    if ckpt is not None:
        log.info("Resuming from %s", ckpt)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt is not None else None)

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


def console_callbacks(callbacks: list, trainer_kwargs: dict[str, Any]) -> list:
    """The callbacks without the progress bar / model summary when the Trainer flags turn those off (Lightning
    refuses a progress bar callback with ``enable_progress_bar=False``). With a summary callback of ours the flag
    is turned off, so that Lightning neither adds its own nor says it skipped it. ``enable_checkpointing=None``
    becomes whether a ModelCheckpoint is configured: with none, Lightning would write one after every epoch."""
    off = tuple(
        kind for flag, kind in (("enable_progress_bar", ProgressBar), ("enable_model_summary", ModelSummary))
        if trainer_kwargs.get(flag) is False
    )  # fmt: skip
    kept = [c for c in callbacks if not isinstance(c, off)] if off else callbacks
    if any(isinstance(c, ModelSummary) for c in kept):
        trainer_kwargs["enable_model_summary"] = False
    if trainer_kwargs.get("enable_checkpointing") is None:  # Lightning's None adds a ModelCheckpoint of its own
        trainer_kwargs["enable_checkpointing"] = any(isinstance(c, ModelCheckpoint) for c in kept)
    return kept


def resolve_strategy(trainer_kwargs: dict[str, Any], timeout_s: float, environ: Mapping[str, str] | None = None) -> Any:
    """Every way of asking for DDP as one DDPStrategy with a process-group timeout long enough for rank 0's one-off
    work (label caching, AutoAnchor) while the other ranks wait at a barrier (Lightning's default is 30 min, YOLOv5's
    3 h): a DDP name of Lightning's registry (``ddp``, ``ddp_spawn``, ``ddp_find_unused_parameters_true``, ...) with
    that name's settings, and ``auto`` where it means several processes. Other strategies as given."""
    strategy = trainer_kwargs.get("strategy", "auto")
    gpus = len(visible_gpus(os.environ if environ is None else environ))
    if strategy == "auto" and not single_process(trainer_kwargs, gpus):
        strategy = "ddp"  # Lightning's choice for several devices (outside notebooks)
    entry = StrategyRegistry[strategy] if isinstance(strategy, str) and strategy in StrategyRegistry else None
    if entry is not None and entry["strategy"] is DDPStrategy:
        return DDPStrategy(timeout=timedelta(seconds=timeout_s), **entry["init_params"])
    return strategy


def _plugins(configured: Any, trainer_kwargs: dict[str, Any]) -> list:
    """trainer.plugins plus our atomic checkpoint writer (unless a CheckpointIO of the user's is among them), and
    Lightning's own cluster environment for a one-task SLURM job that needs ranks (:func:`own_ranks_in_slurm_task`)."""
    plugins = [] if configured is None else list(configured) if isinstance(configured, list) else [configured]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    if not any(isinstance(p, ClusterEnvironment) for p in plugins) and own_ranks_in_slurm_task(trainer_kwargs):
        plugins.append(LightningEnvironment())
    return plugins


def own_ranks_in_slurm_task(trainer_kwargs: dict[str, Any], environ: dict[str, str] | None = None) -> bool:
    """True for a run that is one SLURM task (``SLURM_NTASKS=1``: ``sbatch`` without ``srun``, a submitit job) and
    needs DDP ranks on its node. Lightning's SLURM environment would expect SLURM to have started one task per
    device and refuse ``devices>1``; its own launcher starts the ranks instead, as outside SLURM. Runs that need no
    ranks keep the SLURM environment (its auto-requeue)."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_NTASKS") != "1" or int(trainer_kwargs.get("num_nodes", 1)) != 1:
        return False
    return not single_process(trainer_kwargs, len(visible_gpus(env)))


def train_job(cfg: DictConfig) -> float:
    """One training run of a composed config, user errors reported in one line (status 1)."""
    return exit_on_user_error(USER_ERRORS, run, cfg)


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    if in_multirun():  # every -m job trains as its own process (detector/evolve/trial.py says why)
        trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
        return run_in_child(trainer, cfg.trial_timeout, cfg.trial_preload, cfg.trial_pin_gpus, cfg)
    return train_job(cfg)


if __name__ == "__main__":
    main()
