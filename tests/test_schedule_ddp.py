"""The step rule under DDP: two CPU ranks (gloo); nb counts each rank's batches and every rank follows the plan."""

from __future__ import annotations

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback

from detector.data.config import load_data_config
from detector.data.shapes import ensure_shapes_dataset
from detector.schedule import TrainingSchedule
from detector.train import build_datamodule, build_module
from tests.helpers import compose_train


class RecordSteps(Callback):
    """Saves each rank's per-batch lr, momentum and last_opt_step (spawned ranks do not share the parent's objects)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.rows: list[list[float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        self.rows.append([g["lr"] for g in groups] + [groups[0]["momentum"], pl_module.last_opt_step])

    def on_train_end(self, trainer, pl_module) -> None:
        np.savez(f"{self.out_dir}/rank{trainer.global_rank}.npz", rows=np.array(self.rows),
                 nb=trainer.num_training_batches, steps=trainer.global_step)  # fmt: skip


def test_every_rank_follows_the_schedule_with_its_own_batch_count(tmp_path):
    world, epochs = 2, 3
    data_yaml = ensure_shapes_dataset(tmp_path / "shapes", n_train=16, n_val=4)
    cfg = compose_train([
        f"data={data_yaml}", f"run_dir={tmp_path}", "imgsz=64", "batch_size=4", "workers=0", f"epochs={epochs}",
        "model.width_multiple=0.0625", "hyp.warmup_epochs=0.5", "schedule.min_warmup_iters=3",
    ])  # fmt: skip
    data = load_data_config(cfg.data, cfg.datasets_dir)
    module = build_module(cfg, data.nc, data.names)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp_spawn",
        max_epochs=epochs,
        callbacks=[RecordSteps(str(tmp_path))],
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=build_datamodule(cfg, data, stride=int(module.model.stride.max())))
    # 16 images over 2 ranks in per-rank batches of 2: nb = 4 on each rank, not 8.
    hyp = cfg.hyp
    plan = TrainingSchedule(
        nb=4, epochs=epochs, batch_size=4, lr0=hyp.lr0, momentum=hyp.momentum, warmup_bias_lr=hyp.warmup_bias_lr,
        lrf=hyp.lrf, warmup_epochs=0.5, warmup_momentum=hyp.warmup_momentum, nbs=cfg.nbs, cos_lr=False,
        min_warmup_iters=3, ramp_adam_beta1=True,
    )  # fmt: skip
    expected = plan.plan()
    for rank in range(world):
        rec = np.load(tmp_path / f"rank{rank}.npz")
        assert int(rec["nb"]) == 4
        rows = rec["rows"]
        assert rows.shape == (epochs * 4, 5)
        np.testing.assert_array_equal(rows[:, :3], expected.lr)
        np.testing.assert_array_equal(rows[:, 3], expected.momentum)
        assert int(rec["steps"]) == plan.optimizer_steps()
