"""Test helpers: compose the real Hydra config with overrides; datasets with the config's rendering settings."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from detector import CONF_DIR

# BGR colours far apart (L-inf 255) and from the grey 114 padding: blended edges never look like another colour.
PALETTE = [
    (0, 0, 255),
    (0, 255, 0),
    (255, 0, 0),
    (0, 255, 255),
    (255, 0, 255),
    (255, 255, 0),
    (255, 255, 255),
]


def compose_train(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/train.yaml as `python -m detector.train` would, without starting a run."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides or [])


def conf_callback(name: str, overrides: list[str] | None = None, **kwargs: Any) -> Callback:
    """Callback ``name`` of conf/callbacks/default.yaml, built as a run builds it, with ``kwargs`` replacing
    its settings (``save_dir`` is needed for the ones that write into the run folder)."""
    from hydra.utils import instantiate

    return instantiate(compose_train(overrides).callbacks[name], **kwargs)


class TinyModule(L.LightningModule):
    """One convolution trained on the batch's images: a fit that exercises the data path, not the detector."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.conv(batch[0].float() / 255).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StopAfterEpochs(Callback):
    """Ends a fit after ``epochs`` epochs as an interruption would, checkpoints written (resume tests)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def conf_rendering(**overrides: Any) -> dict[str, Any]:
    """conf/augment/default.yaml (the settings a YoloDataset renders with) with ``overrides``."""
    values = yaml.safe_load((Path(CONF_DIR) / "augment" / "default.yaml").read_text())
    unknown = set(overrides) - set(values)
    if unknown:
        raise KeyError(f"not conf/augment keys: {sorted(unknown)}")
    return values | overrides


def make_dataset(labelset: Any, **kw: Any) -> Any:
    """YoloDataset with the config's rendering settings and small-test defaults for the other settings;
    conf/augment keys among ``kw`` override the rendering settings."""
    from detector.data.dataset import YoloDataset
    from detector.data.rendering import RENDERING_KEYS

    rendering = conf_rendering(**{k: kw.pop(k) for k in list(kw) if k in RENDERING_KEYS})
    defaults = dict(batch_size=16, hyp={}, augment=False, rect=False, stride=32, seed=0, epochs=300, close_mosaic=0,
                    cache=None, workers=2)  # fmt: skip
    return YoloDataset(labelset, rendering=rendering, **(defaults | kw))


class Fp16Probe(Callback):
    """Writes to ``path`` (json), at the first batch a fit trains, whether every floating-point tensor of the model
    and its anchors are exactly representable in float16."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.path.exists():
            return
        import json

        import torch

        def exact(t: torch.Tensor) -> bool:
            return bool(torch.equal(t, t.half().to(t.dtype)))

        tensors = [t for t in (*pl_module.model.parameters(), *pl_module.model.buffers()) if t.is_floating_point()]
        result = {"all": all(exact(t) for t in tensors), "anchors": exact(pl_module.model.detect.anchors)}
        self.path.write_text(json.dumps(result))


class PoisonLoss(Callback):
    """Makes the training loss NaN on the listed global batch numbers (non-finite loss tests)."""

    def __init__(self, batches: list[int]) -> None:
        self.batches = set(batches)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss_fn, counter = pl_module.loss_fn, iter(range(1 << 30))

        def poisoned(preds, targets):
            loss, items = loss_fn(preds, targets)
            if not torch.is_grad_enabled():  # validation
                return loss, items
            return (loss * float("nan"), items) if next(counter) in self.batches else (loss, items)

        pl_module.loss_fn = poisoned


class Rendezvous(Callback):
    """Each process checks in at train start and waits (up to ``timeout`` s) until ``n`` have: proves that ``n``
    trainings run at the same time, whatever their start-up skew (launcher tests)."""

    def __init__(self, folder: str, n: int, timeout: float = 300.0) -> None:
        self.folder, self.n, self.timeout = Path(folder), n, timeout

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / str(os.getpid())).touch()
        deadline = time.time() + self.timeout
        while len(list(self.folder.iterdir())) < self.n:
            if time.time() > deadline:
                raise RuntimeError(f"only {len(list(self.folder.iterdir()))} of {self.n} trainings ran at once")
            time.sleep(0.05)


class HangWhile(Callback):
    """Waits at train start while ``flag`` exists, in the run folder named ``job`` only (None: every run): a sweep
    child that cannot finish on its own (kill and timeout tests). A SIGTERM ends the wait, as a batch boundary would
    for a training child: Lightning's handler records it and stops the fit at the next batch."""

    def __init__(self, flag: str, job: str | None = None) -> None:
        self.flag, self.job = Path(flag), None if job is None else str(job)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.job is not None and Path(trainer.default_root_dir).name != self.job:
            return
        while self.flag.exists() and not trainer.received_sigterm:
            time.sleep(0.1)


class RankStateProbe(Callback):
    """Appends to ``<folder>/rank<R>.jsonl``, at every validation (the weights validated: the EMA's) and every
    checkpoint (its ``state_dict`` and ``current_model_state``), a sha256 of each tensor group: every rank holds one
    model exactly when the ranks' files are equal."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def _write(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        import json

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step, **record}) + "\n")

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if batch_idx == 0 and not trainer.sanity_checking:
            self._write(trainer, {"at": "validation", **state_hashes(pl_module.state_dict())})

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        groups = {name: state_hashes(checkpoint[name]) for name in ("state_dict", "current_model_state")
                  if name in checkpoint}  # fmt: skip
        self._write(trainer, {"at": "checkpoint", **{f"{g}.{k}": v for g, h in groups.items() for k, v in h.items()}})


def state_hashes(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """sha256 of the BatchNorm statistics (``running_*``) and of every other floating-point tensor of a state."""
    import hashlib

    groups: dict[str, Any] = {"bn_stats": hashlib.sha256(), "weights": hashlib.sha256()}
    for name, t in sorted(state.items()):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            group = "bn_stats" if ".running_" in name else "weights"
            groups[group].update(t.detach().cpu().contiguous().numpy().tobytes())
    return {k: h.hexdigest() for k, h in groups.items()}
