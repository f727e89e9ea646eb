"""`python -m detector.val ckpt=...`: validate a checkpoint of ours with its run's settings; the per-class table,
the validation pictures and optionally COCO-format predictions go into a new run folder (conf/val.yaml)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from detector import CONF_DIR
from detector.callbacks.predictions_json import PredictionsJson
from detector.callbacks.validation_plots import ValidationPlots
from detector.data.config import load_data_config
from detector.resume import CONFIG_KEY
from detector.train import build_datamodule, build_module

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable or not one of ours; the message names the file."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of ours, loaded with ``weights_only=True`` (tensors and plain containers, no pickled code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt={path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, another format, or pickled objects weights_only refuses
        raise CheckpointError(f"ckpt={path}: cannot be read as a detector checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or "state_dict" not in state or CONFIG_KEY not in state:
        raise CheckpointError(f"ckpt={path}: not a detector checkpoint (no state_dict or run config)")
    return state


def validate(cfg: DictConfig, cwd: str | None = None) -> dict[str, float]:
    """Validate ``cfg.ckpt``; returns the logged metrics (``metrics/*``, ``val/*``, ``fitness``)."""
    cwd = cwd or str(Path.cwd())
    state = load_checkpoint(Path(cwd) / str(cfg.ckpt))
    run = OmegaConf.create(state[CONFIG_KEY])
    hparams = state.get("hyper_parameters", {})
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = load_data_config(cfg.data if cfg.data is not None else run.data, cfg.datasets_dir, cwd)
    names = dict(hparams.get("names") or data.names)
    nc = int(hparams.get("nc", len(names)))
    if not run.single_cls and data.nc != nc:
        raise ValueError(f"data={cfg.data}: {data.nc} classes, but the checkpoint was trained on {nc}")
    module = build_module(run, nc, names)
    module.load_state_dict(state["state_dict"])  # the EMA weights (checkpoints keep the raw ones beside them)
    imgsz = int(cfg.imgsz if cfg.imgsz is not None else run.imgsz)
    datamodule = build_datamodule(run, data, stride=int(module.model.stride.max()), imgsz=imgsz,
                                  workers=int(cfg.workers), report_dir=run_dir, val_batch_size=int(cfg.batch_size),
                                  cache=None)  # fmt: skip
    callbacks: list[L.Callback] = [ValidationPlots(run_dir, **cfg.plots)]
    if cfg.save_json:
        callbacks.append(PredictionsJson(run_dir / "predictions.json"))
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, precision=cfg.precision, logger=False,
                        callbacks=callbacks, default_root_dir=str(run_dir), enable_model_summary=False)  # fmt: skip
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]  # the module logs the table
    log.info("Results saved to %s", run_dir)
    return metrics


@hydra.main(config_path=CONF_DIR, config_name="val", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        validate(cfg, get_original_cwd())
    except (CheckpointError, FileNotFoundError) as e:
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
