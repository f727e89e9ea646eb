"""Checkpoint files written atomically: a temporary file in the checkpoint's own folder, fsync, then a rename.

Lightning's TorchCheckpointIO saves through an fsspec transaction, which for a local path writes a temporary file in
TMPDIR and moves it; across filesystems that move is a copy, so a kill during it can leave a truncated last.ckpt.
A rename within one folder is atomic: a reader sees the old checkpoint or the new one, never a part.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are atomic on local paths (other URLs keep Lightning's own save)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
