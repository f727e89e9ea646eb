"""The step rule under AMP: gradients are clipped after the GradScaler unscales them, as YOLOv5 does."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from detector.data.config import load_data_config
from detector.data.shapes import ensure_shapes_dataset
from detector.train import build_datamodule, build_module
from tests.helpers import compose_train


def first_step_change(data_yaml, tmp_path, plugins) -> float:
    cfg = compose_train([f"data={data_yaml}", f"run_dir={tmp_path}", "imgsz=64", "batch_size=8", "nbs=8", "workers=0"])
    L.seed_everything(0)
    data = load_data_config(cfg.data, cfg.datasets_dir)
    module = build_module(cfg, data.nc, data.names)
    before = torch.cat([p.detach().flatten().clone() for p in module.model.parameters()])
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        plugins=plugins,
    )
    trainer.fit(module, datamodule=build_datamodule(cfg, data, stride=int(module.model.stride.max())))
    assert trainer.global_step == 1
    # All parameters: at iteration 0 of warmup only the biases have a non-zero lr.
    return float((torch.cat([p.detach().flatten() for p in module.model.parameters()]) - before).norm())


def test_amp_step_matches_full_precision_step(tmp_path):
    data_yaml = ensure_shapes_dataset(tmp_path / "shapes", n_train=8, n_val=4)
    try:
        # 2**13, not GradScaler's 2**16: at 2**16 this batch's scaled fp16 gradients overflow, and GradScaler skips
        # the step (as it would on a GPU); the change left is then only the fp16 rounding at train start (0.31x)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**13)
        amp = [MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    except Exception as e:  # pragma: no cover - torch builds without CPU fp16 autocast
        pytest.skip(f"no CPU GradScaler: {e}")
    fp32 = first_step_change(data_yaml, tmp_path / "fp32", [])
    mixed = first_step_change(data_yaml, tmp_path / "amp", amp)
    assert fp32 > 0
    assert scaler.get_scale() == 2.0**13  # no overflow: the step was taken
    # Clipping the still-scaled gradients would shrink the AMP step by the loss scale (8192x).
    assert mixed == pytest.approx(fp32, rel=0.2)


def test_bf16_mixed_step_matches_full_precision_step_on_cpu(tmp_path):
    """bf16-mixed (CPU autocast, no GradScaler) under our manual optimization: one step close to the fp32 step."""
    data_yaml = ensure_shapes_dataset(tmp_path / "shapes", n_train=8, n_val=4)
    fp32 = first_step_change(data_yaml, tmp_path / "fp32", [])
    bf16 = first_step_change(data_yaml, tmp_path / "bf16", [MixedPrecision("bf16-mixed", "cpu")])
    assert fp32 > 0
    assert bf16 == pytest.approx(fp32, rel=0.1)
