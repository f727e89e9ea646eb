"""Reading a checkpoint of ours for val / predict: ``weights_only=True``, a clear message when it is not one, and
the model it holds built with its run's config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from detector.module import DetectorModule
from detector.resume import CONFIG_KEY


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


def model_from_checkpoint(state: dict[str, Any]) -> tuple[DetectorModule, DictConfig]:
    """The checkpoint's module (its run's model config, nc and names; the EMA weights) and the run's config."""
    from detector.train import build_module  # train imports the commands' modules; import it only when used

    run = OmegaConf.create(state[CONFIG_KEY])
    hparams = state.get("hyper_parameters", {})
    names = {int(k): str(v) for k, v in (hparams.get("names") or {}).items()}
    nc = int(hparams.get("nc", len(names)))
    module = build_module(run, nc, names or {i: str(i) for i in range(nc)})
    module.load_state_dict(state["state_dict"])  # the EMA weights (checkpoints keep the raw ones beside them)
    return module, run
