"""AutoAnchor callback inside a real lightning.Trainer: writes the Detect buffer, skips on resume/disabled,
and the checkpoint carries the new anchors."""

import logging

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tests.helpers import conf_callback

DEFAULT_PX = torch.tensor(
    [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]],
    dtype=torch.float32,
)
STRIDE = torch.tensor([8.0, 16.0, 32.0])


class FakeDetect(nn.Module):
    def __init__(self, anchors_px: torch.Tensor = DEFAULT_PX):
        super().__init__()
        self.stride = STRIDE.clone()
        self.register_buffer("anchors", anchors_px / STRIDE.view(-1, 1, 1))


class FakeModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.detect = FakeDetect()


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = FakeModel()

    def training_step(self, batch, batch_idx):
        return self.model.lin(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class LabelledDataset(Dataset):
    """Holds YOLO labels and (w, h) sizes like YoloDataset; items are dummy inputs."""

    def __init__(self, labels, sizes_wh):
        self.labels, self.sizes_wh = labels, np.asarray(sizes_wh)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.ones(2)


class DataModule(L.LightningDataModule):
    def __init__(self, dataset):
        super().__init__()
        self.train_dataset = dataset

    def train_dataloader(self):
        return DataLoader(self.train_dataset, batch_size=2)


def elongated_dataset(n_img=200, per_img=10, seed=0):
    """Thin tall boxes (~8 x 300 px at 640) that the default anchors do not cover."""
    rng = np.random.default_rng(seed)
    labels = []
    for _ in range(n_img):
        w = 8 / 640 * rng.lognormal(0, 0.15, per_img)
        h = 300 / 640 * rng.lognormal(0, 0.15, per_img)
        labels.append(np.stack([np.zeros(per_img), np.full(per_img, 0.5), np.full(per_img, 0.5), w, h], 1))
    return LabelledDataset(labels, np.full((n_img, 2), 640))


def fitting_dataset(n_img=200, per_img=10, seed=0):
    """Boxes close to the default anchors: BPR ~ 1."""
    rng = np.random.default_rng(seed)
    px = DEFAULT_PX.reshape(-1, 2).numpy()
    labels = []
    for _ in range(n_img):
        wh = px[rng.integers(0, 9, per_img)] * rng.lognormal(0, 0.1, (per_img, 2)) / 640
        labels.append(np.concatenate([np.zeros((per_img, 3)) + 0.5, wh], 1))
    return LabelledDataset(labels, np.full((n_img, 2), 640))


def trainer(callback, max_epochs=1, tmp_path=None):
    return L.Trainer(
        max_epochs=max_epochs,
        limit_train_batches=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )


def anchors_px(module):
    return module.model.detect.anchors * STRIDE.view(-1, 1, 1)


def test_callback_replaces_anchors_and_checkpoint_has_them(tmp_path, caplog):
    cb = conf_callback("autoanchor", thr=4.0, imgsz=640, gen=50)
    module = Module()
    t = trainer(cb, tmp_path=tmp_path)
    with caplog.at_level(logging.INFO, logger="detector.callbacks.autoanchor"):
        t.fit(module, datamodule=DataModule(elongated_dataset()))
    assert cb.result is not None and cb.result.replaced
    assert cb.result.old_bpr < 0.1 and cb.result.new_bpr > 0.98
    new = module.model.detect.anchors
    assert not torch.allclose(anchors_px(module), DEFAULT_PX)
    torch.testing.assert_close(anchors_px(module), torch.as_tensor(cb.result.anchors), rtol=1e-5, atol=1e-4)
    assert (anchors_px(module).prod(-1).mean(-1).diff() > 0).all()  # larger anchors on larger strides
    assert "Best Possible Recall (BPR)" in caplog.text and "→" in caplog.text
    path = tmp_path / "x.ckpt"
    t.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    torch.testing.assert_close(state["model.detect.anchors"], new)


def test_callback_keeps_fitting_anchors(caplog):
    cb = conf_callback("autoanchor", thr=4.0, imgsz=640, gen=50)
    module = Module()
    with caplog.at_level(logging.INFO, logger="detector.callbacks.autoanchor"):
        trainer(cb).fit(module, datamodule=DataModule(fitting_dataset()))
    assert not cb.result.replaced
    torch.testing.assert_close(anchors_px(module), DEFAULT_PX)
    assert "Current anchors are a good fit to dataset ✅" in caplog.text


def test_callback_disabled_and_resume_keep_anchors(tmp_path, caplog):
    module = Module()
    cb = conf_callback("autoanchor", thr=4.0, imgsz=640, enabled=False)
    t = trainer(cb, tmp_path=tmp_path)
    t.fit(module, datamodule=DataModule(elongated_dataset()))
    assert cb.result is None
    torch.testing.assert_close(anchors_px(module), DEFAULT_PX)
    path = tmp_path / "last.ckpt"
    t.save_checkpoint(path)

    module2, cb2 = Module(), conf_callback("autoanchor", thr=4.0, imgsz=640, gen=50)
    with caplog.at_level(logging.INFO, logger="detector.callbacks.autoanchor"):
        trainer(cb2, max_epochs=2, tmp_path=tmp_path).fit(
            module2, datamodule=DataModule(elongated_dataset()), ckpt_path=path
        )
    assert cb2.result is None and "resuming" in caplog.text
    torch.testing.assert_close(anchors_px(module2), DEFAULT_PX)


def test_callback_force_replaces_placeholders():
    module = Module()
    placeholders = torch.arange(6, dtype=torch.float32).reshape(3, 2).repeat(3, 1, 1)
    module.model.detect.anchors.copy_(placeholders / STRIDE.view(-1, 1, 1))
    module.model.placeholder_anchors = True  # as DetectionModel marks hyp.anchors placeholders
    cb = conf_callback("autoanchor", thr=4.0, imgsz=640, gen=50)
    trainer(cb).fit(module, datamodule=DataModule(fitting_dataset()))
    assert cb.result.replaced and cb.result.new_bpr > 0.98
    assert torch.isfinite(module.model.detect.anchors).all() and (module.model.detect.anchors > 0).all()


def test_callback_without_datamodule_uses_train_dataloader():
    module, cb = Module(), conf_callback("autoanchor", thr=4.0, imgsz=640, gen=50)
    trainer(cb).fit(module, train_dataloaders=DataLoader(elongated_dataset(), batch_size=2))
    assert cb.result is not None and cb.result.replaced
    torch.testing.assert_close(anchors_px(module), torch.as_tensor(cb.result.anchors), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "dataset",
    [
        LabelledDataset([np.zeros((3, 2))], [[640, 640]]),  # malformed labels: label_wh raises
        LabelledDataset([np.zeros((0, 5))] * 4, np.full((4, 2), 640)),  # zero labels
    ],
)
def test_callback_never_stops_training(dataset, caplog):
    module, cb = Module(), conf_callback("autoanchor", thr=4.0, imgsz=640, gen=10)
    t = trainer(cb)
    with caplog.at_level(logging.INFO, logger="detector.callbacks.autoanchor"):
        t.fit(module, datamodule=DataModule(dataset))
    assert t.global_step == 1  # training ran
    torch.testing.assert_close(anchors_px(module), DEFAULT_PX)
    assert "failed" in caplog.text or "no labels" in caplog.text
