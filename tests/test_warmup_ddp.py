"""Warmup under DDP: two CPU ranks (gloo); nb counts the batches of each rank, and every rank follows YOLOv5."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from detector.callbacks.warmup import Warmup
from detector.optim import lr_lambda
from tests.test_warmup import BATCH, EPOCHS, HYP, NB, NBS, DummyModule, yolov5_reference


class RecordingModule(DummyModule):
    """Saves each rank's per-batch records to a file (spawned ranks do not share the parent's objects)."""

    def __init__(self, out_dir: str, lf) -> None:
        super().__init__("SGD", lf)
        self.out_dir = out_dir

    def on_train_end(self) -> None:
        ni = np.array([r[0] for r in self.records])
        lr = np.array([r[1] for r in self.records])
        mom = np.array([r[2] for r in self.records])
        acc = np.array([r[3] for r in self.records])
        np.savez(
            f"{self.out_dir}/rank{self.global_rank}.npz",
            ni=ni,
            lr=lr,
            mom=mom,
            acc=acc,
            nb=self.trainer.num_training_batches,
        )


def test_warmup_under_ddp_counts_batches_per_rank(tmp_path):
    world = 2
    lf = lr_lambda(EPOCHS, HYP["lrf"], False)
    module = RecordingModule(str(tmp_path), lf)
    # NB batches of 2 per rank: the DistributedSampler splits 2 * NB * world samples between the ranks.
    data = DataLoader(TensorDataset(torch.randn(NB * 2 * world, 4)), batch_size=2)
    callback = Warmup(HYP["warmup_epochs"], HYP["wbias"], HYP["warmup_momentum"], HYP["momentum"], BATCH, NBS)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp_spawn",
        max_epochs=EPOCHS,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    ref_lr, ref_mom, ref_acc = yolov5_reference(lf, NB, EPOCHS, HYP["wbias"])
    for rank in range(world):
        rec = np.load(tmp_path / f"rank{rank}.npz")
        assert int(rec["nb"]) == NB
        np.testing.assert_array_equal(rec["ni"], np.arange(EPOCHS * NB))
        np.testing.assert_allclose(rec["lr"], ref_lr, rtol=0, atol=1e-9)
        np.testing.assert_allclose(rec["mom"], ref_mom, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(rec["acc"], ref_acc)
