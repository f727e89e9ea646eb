"""YOLOv5's console during training: one bar per epoch under its columns (epoch, device memory, mean box/obj/cls
loss, instances, image size) and, after each validation, the table's ``all`` line (images, instances, P, R, mAP50,
mAP50-95). Lightning's tqdm bar does the drawing; only the texts are ours."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

from detector.metrics import TABLE_HEADER, format_all_row

TRAIN_HEADER = ("%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size")


def device_memory_gb(device: torch.device) -> float:
    """Memory the CUDA caching allocator holds on ``device`` (YOLOv5's GPU_mem column); 0 elsewhere."""
    return torch.cuda.memory_reserved(device) / 1e9 if device.type == "cuda" else 0.0


def train_columns(
    epoch: int, epochs: int, memory_gb: float, mean_loss: Sequence[float], instances: int, size: int
) -> str:
    """One training line's values under :data:`TRAIN_HEADER`."""
    return ("%11s" * 2 + "%11.4g" * 5) % (f"{epoch}/{epochs - 1}", f"{memory_gb:.3g}G", *mean_loss, instances, size)


class YoloProgressBar(TQDMProgressBar):
    """TQDMProgressBar with YOLOv5's texts. The running mean losses come from ``pl_module.last_loss_items``.

    The mean is kept on the training device and copied to the host without waiting (CUDA: into pinned memory, an
    event marks it done): a redraw shows the newest copy the device has finished, usually the previous batch's; the
    epoch's last line waits for its own. A blocking copy every batch would make the host wait for the device.
    """

    BAR_FORMAT = "{l_bar}{bar:10}{r_bar}"

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=True)  # leave: one finished bar per epoch stays
        self._mean_loss: torch.Tensor | None = None  # the epoch's running mean box/obj/cls loss, on the device
        self._copies: deque[tuple[torch.Tensor, torch.cuda.Event | None]] = deque()  # host copies under way
        self._shown: list[float] = [0.0, 0.0, 0.0]  # the mean in the text

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {}  # the values are in the description, as YOLOv5 shows them

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(desc=TABLE_HEADER, total=convert_inf(self.total_val_batches), disable=self.is_disabled,
                    leave=True, dynamic_ncols=True, file=sys.stdout, bar_format=self.BAR_FORMAT)  # fmt: skip

    def on_train_start(self, *_: Any) -> None:
        self.train_progress_bar = Tqdm(disable=True)  # each epoch opens its own bar

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_progress_bar.close()
        if self.is_enabled:
            Tqdm.write("\n" + TRAIN_HEADER, file=sys.stdout)
        self._mean_loss = torch.zeros(3, device=pl_module.device)
        self._copies.clear()
        self._shown = [0.0, 0.0, 0.0]
        self.train_progress_bar = Tqdm(
            desc=self._train_text(trainer, pl_module, 0, 0), total=convert_inf(self.total_train_batches),
            disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0,
            bar_format=self.BAR_FORMAT,
        )  # fmt: skip

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = self._train_progress_bar
        if bar is not None and trainer.state.fn == "fit" and bar.total is not None and bar.n >= bar.total:
            bar.close()  # the epoch's line stays; validation prints below it, as YOLOv5's
        super().on_validation_start(trainer, pl_module)

    def _train_text(self, trainer: L.Trainer, pl_module: L.LightningModule, instances: int, size: int) -> str:
        memory = device_memory_gb(pl_module.device)
        return train_columns(trainer.current_epoch, trainer.max_epochs, memory, self._shown, instances, size)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if self.is_disabled:  # other DDP ranks: no device-to-host copy of the losses
            return
        mean = self._mean_loss
        items = pl_module.last_loss_items.detach().float().to(mean.device)
        self._mean_loss = (mean * batch_idx + items) / (batch_idx + 1)
        n, total = batch_idx + 1, self.train_progress_bar.total
        if self._should_update(n, total):
            self._shown = self._host_mean(wait=total is not None and n >= total)  # the epoch's line: exact
            size = int(getattr(pl_module, "last_imgsz", batch[0].shape[-1]))
            self.train_progress_bar.set_description(self._train_text(trainer, pl_module, len(batch[1]), size), False)
            self.train_progress_bar.n = n
            self.train_progress_bar.refresh()

    def _host_mean(self, wait: bool) -> list[float]:
        """The newest running mean copied to the host; ``wait``: the current one, waiting for the device."""
        mean = self._mean_loss
        if wait or mean.device.type not in ("cpu", "cuda"):  # other devices: no event to tell a copy done
            self._copies.clear()
            return mean.tolist()
        host = mean.to("cpu", non_blocking=True, copy=True)  # CUDA: into pinned memory, queued after this batch
        event = None
        if mean.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self._copies.append((host, event))
        shown = self._shown
        while self._copies and (self._copies[0][1] is None or self._copies[0][1].query()):  # query() never waits
            shown = self._copies.popleft()[0].tolist()
        return shown

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self.val_progress_bar.reset(total=convert_inf(self.total_val_batches_current_dataloader))
        self.val_progress_bar.set_description(TABLE_HEADER)  # without Lightning's " DataLoader 0"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        results = getattr(pl_module, "last_val_results", None)
        if self.is_enabled and results is not None and trainer.state.fn == "fit":
            Tqdm.write(format_all_row(results), file=sys.stdout)  # the val command's table is logged whole
