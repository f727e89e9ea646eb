"""bench/gpu/check.sh's buffer check under DDP: every rank appends to ``path``, at each validation (its first batch)
and each checkpoint, one JSON line with its rank and a sha256 of every floating-point tensor of
``pl_module.state_dict()`` (the weights validated or saved, BatchNorm statistics included), and at a checkpoint
also of the checkpoint's ``state_dict`` and ``current_model_state``. The ranks hold one model exactly when their
lines are equal (bench/gpu/report.py ranks compares them).

    +callbacks.rank_probe._target_=rank_probe.RankProbe +callbacks.rank_probe.path=/tmp/ranks.jsonl
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import lightning as L
import torch


def tensor_hashes(state: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """sha256 (first 16 hex digits) of the bytes of each floating-point tensor of a state dict."""
    return {prefix + name: hashlib.sha256(t.detach().cpu().reshape(-1).view(torch.uint8).numpy()).hexdigest()[:16]
            for name, t in sorted(state.items()) if isinstance(t, torch.Tensor) and t.is_floating_point()}  # fmt: skip


class RankProbe(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, trainer: L.Trainer, at: str, hashes: dict[str, str]) -> None:
        line = json.dumps({"rank": trainer.global_rank, "at": at, "epoch": trainer.current_epoch,
                           "step": trainer.global_step, "hashes": hashes}) + "\n"  # fmt: skip
        # One write of the whole line in append mode: the ranks' lines do not interleave
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = line.encode()
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if batch_idx == 0 and not trainer.sanity_checking:
            self._write(trainer, "validation", tensor_hashes(pl_module.state_dict()))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        hashes = tensor_hashes(pl_module.state_dict())
        for key in ("state_dict", "current_model_state"):
            if isinstance(checkpoint.get(key), dict):
                hashes.update(tensor_hashes(checkpoint[key], f"{key}:"))
        self._write(trainer, "checkpoint", hashes)
