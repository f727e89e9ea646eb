"""bench/gpu/check.sh's callback on a run of ours: wall-clock stamps (time.time, comparable with nvidia-smi's
samples) at each epoch's start, validation start and validation end, as bench/epoch_clock.py's keys, plus what the
run trained on: device, precision, loader workers, peak CUDA memory, and whether the process was forked by
multiprocessing (an evolution child from the preloading server). Rank 0 writes ``path`` as JSON after each stamp; a
relative ``path`` lands in the run folder.

    +callbacks.run_probe._target_=run_probe.RunProbe +callbacks.run_probe.path=/tmp/probe.json
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

MIB = 2**20


class RunProbe(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.record: dict[str, Any] = {"start": [], "val_start": [], "end": [], "pid": os.getpid(),
                                       "forked": multiprocessing.parent_process() is not None}  # fmt: skip

    def _write(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        path = self.path if self.path.is_absolute() else Path(trainer.default_root_dir) / self.path
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.record))
        os.replace(tmp, path)

    def _memory(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            self.record["peak_allocated_mib"] = torch.cuda.max_memory_allocated(pl_module.device) / MIB
            self.record["peak_reserved_mib"] = torch.cuda.max_memory_reserved(pl_module.device) / MIB

    def _stamp(self, trainer: L.Trainer, key: str) -> None:
        if not trainer.sanity_checking:
            self.record[key].append(time.time())
            self._write(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record.update(device=str(pl_module.device), precision=str(trainer.precision),
                           world_size=trainer.world_size, cuda_initialized=torch.cuda.is_initialized(),
                           train_start=time.time())  # fmt: skip
        self._write(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        self.record["loader_workers"] = getattr(loader, "num_workers", None)
        self._stamp(trainer, "start")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stamp(trainer, "val_start")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._memory(pl_module)
        self._stamp(trainer, "end")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._memory(pl_module)
        self.record["train_end"] = time.time()
        self._write(trainer)
