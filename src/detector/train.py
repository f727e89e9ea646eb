"""`python -m detector.train`: compose the config, build data, model, callbacks and Trainer, fit, return fitness."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import get_original_cwd, instantiate
from omegaconf import DictConfig, OmegaConf

from detector.data.config import load_data_config
from detector.data.datamodule import DetectorDataModule
from detector.module import DetectorModule
from detector.run_config import prepare_config, resolve_ckpt_path

log = logging.getLogger(__name__)

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a name -> {_target_: ...} mapping; null entries are skipped."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and node.get("_target_")]


def build_datamodule(cfg: DictConfig, data, run_dir: Path) -> DetectorDataModule:
    return DetectorDataModule(
        data=data,
        hyp=OmegaConf.to_container(cfg.hyp, resolve=True),
        imgsz=cfg.imgsz,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        seed=cfg.seed,
        epochs=cfg.epochs,
        augment=OmegaConf.to_container(cfg.augment, resolve=True),
        cache=cfg.cache,
        rect=cfg.rect,
        close_mosaic=cfg.close_mosaic,
        single_cls=cfg.single_cls,
        repair_jpeg=cfg.repair_jpeg,
        report_dir=run_dir,
    )


def build_module(cfg: DictConfig, nc: int, names: dict[int, str]) -> DetectorModule:
    return DetectorModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        nc=nc,
        names=names,
        hyp=OmegaConf.to_container(cfg.hyp, resolve=True),
        imgsz=cfg.imgsz,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        cos_lr=cfg.cos_lr,
        nbs=cfg.nbs,
        max_grad_norm=cfg.max_grad_norm,
        label_smoothing=cfg.label_smoothing,
        single_cls=cfg.single_cls,
        multi_scale=cfg.multi_scale,
        seed=cfg.seed,
        val=OmegaConf.to_container(cfg.val, resolve=True),
    )


def run(cfg: DictConfig) -> float:
    """Train with a composed config; returns the best fitness (0.1 mAP@0.5 + 0.9 mAP@0.5:0.95)."""
    cfg = prepare_config(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)

    try:
        cwd = get_original_cwd()
    except ValueError:  # composed without @hydra.main (tests)
        cwd = str(Path.cwd())
    data = load_data_config(cfg.data, cfg.datasets_dir, cwd)
    nc, names = (1, {0: data.names[0] if data.nc == 1 else "item"}) if cfg.single_cls else (data.nc, data.names)
    datamodule = build_datamodule(cfg, data, run_dir)
    module = build_module(cfg, nc, names)

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
    log.info("Results saved to %s (best fitness %.4f)", run_dir, best_fitness)
    return best_fitness


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return run(cfg)


if __name__ == "__main__":
    main()
