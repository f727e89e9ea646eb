"""`python -m detector.val ckpt=...`: validate a checkpoint of ours with its run's settings; the per-class table,
the validation pictures and optionally COCO-format predictions go into a new run folder (conf/val.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from detector import CONF_DIR
from detector.callbacks.predictions_json import PredictionsJson
from detector.callbacks.progress import YoloProgressBar
from detector.callbacks.validation_plots import ValidationPlots
from detector.checkpoint_file import CheckpointError, load_checkpoint, model_from_checkpoint
from detector.console import exit_on_user_error, quiet_third_party
from detector.data.config import load_data_config
from detector.train import build_datamodule

log = logging.getLogger(__name__)


def validate(cfg: DictConfig, cwd: str | None = None) -> dict[str, float]:
    """Validate ``cfg.ckpt``; returns the logged metrics (``metrics/*``, ``val/*``, ``fitness``)."""
    quiet_third_party()
    cwd = cwd or str(Path.cwd())
    module, run = model_from_checkpoint(load_checkpoint(Path(cwd) / str(cfg.ckpt)))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data_name = cfg.data if cfg.data is not None else run.data
    if data_name is None:
        raise CheckpointError(f"ckpt={cfg.ckpt} names no dataset of ours (a YOLOv5 file): give data=path/to/data.yaml")
    data = load_data_config(data_name, cfg.datasets_dir, cwd)
    if not run.single_cls and data.nc != module.hparams.nc:
        raise CheckpointError(f"data={data_name}: {data.nc} classes, but ckpt={cfg.ckpt} was trained on "
                              f"{module.hparams.nc}")  # fmt: skip
    imgsz = int(cfg.imgsz if cfg.imgsz is not None else run.imgsz)
    datamodule = build_datamodule(run, data, stride=int(module.model.stride.max()), imgsz=imgsz,
                                  workers=cfg.workers, report_dir=run_dir, val_batch_size=int(cfg.batch_size),
                                  cache=None)  # fmt: skip
    callbacks: list[L.Callback] = [ValidationPlots(run_dir, **cfg.plots), YoloProgressBar()]
    if cfg.save_json:
        callbacks.append(PredictionsJson(run_dir / "predictions.json"))
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, precision=cfg.precision, logger=False,
                        callbacks=callbacks, default_root_dir=str(run_dir), enable_model_summary=False)  # fmt: skip
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]  # the module logs the table
    log.info("Results saved to %s", run_dir)
    return metrics


@hydra.main(config_path=CONF_DIR, config_name="val", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_on_user_error((CheckpointError, FileNotFoundError), validate, cfg, get_original_cwd())


if __name__ == "__main__":
    main()
