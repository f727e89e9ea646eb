"""Every rank's random states (Python, numpy, torch, CUDA) in the checkpoint, restored on resume.

Lightning's checkpoint holds none of them. Our samples are functions of (seed, epoch, index) and the model has no
random layers, so our own training resumes exactly without them; this keeps resumes exact for anything else that
draws from the global generators (a user's callback or augmentation). States are plain tensors and lists, so the
checkpoint still loads with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

KEY = "rng_states"  # checkpoint entry: one state per global rank


def capture() -> dict[str, Any]:
    """This process's generator states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Set this process's generators to ``state`` (from ``capture``)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        restore_cuda(state["cuda"])


def restore_cuda(states: list[torch.Tensor]) -> int:
    """Set the CUDA generators of the visible GPUs to the first ``states``; returns how many were set.

    A resume may see fewer GPUs per process than the run that saved (e.g. one per rank instead of all of them):
    the states of GPUs that do not exist here are skipped with a warning."""
    visible = torch.cuda.device_count()
    n = min(len(states), visible)
    for index in range(n):
        torch.cuda.set_rng_state(states[index], device=index)
    if n < len(states):
        log.warning("checkpoint has RNG states of %d GPUs, %d visible: restored %d, skipped %d",
                    len(states), visible, n, len(states) - n)  # fmt: skip
    return n


class RngState(L.Callback):
    """Saves the random states of all ranks with each checkpoint and gives each rank its own back on resume."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        mine = capture()
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            states: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(states, mine)  # every rank dumps the checkpoint; rank 0 writes it
        else:
            states = [mine]
        checkpoint[KEY] = states

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get(KEY)
        if not states:
            return
        if len(states) != trainer.world_size:
            log.warning("checkpoint has random states of %d ranks, this run has %d: they are not restored",
                        len(states), trainer.world_size)  # fmt: skip
            return
        restore(states[trainer.global_rank])
