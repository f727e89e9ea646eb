"""The Warmup callback driven by a real Lightning Trainer, checked against YOLOv5's training loop rules."""

import csv
import logging

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from detector.callbacks.warmup import Warmup
from detector.optim import (
    accumulate_for,
    build_optimizer,
    build_scheduler,
    count_optimizer_steps,
    lr_lambda,
    planned_schedule,
    warmup_iters,
)

NB, EPOCHS, BATCH, NBS = 8, 16, 16, 64  # nbs/batch = 4; nw = max(round(3 * 8), 100) = 100 -> ends in epoch 12
HYP = {
    "lr0": 0.01,
    "lrf": 0.01,
    "momentum": 0.937,
    "warmup_epochs": 3.0,
    "warmup_momentum": 0.8,
    "wbias": 0.1,
}


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))  # groups: 2 biases, 1 weight, 1 norm weight


class DummyModule(L.LightningModule):
    """Manual optimization with YOLOv5's step rule; records the optimizer state seen by each batch."""

    def __init__(self, optimizer: str, lf, warmup_bias_lr: float | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = tiny_net()
        self.optimizer_name, self.lf = optimizer, lf
        self.warmup_bias_lr = warmup_bias_lr
        self.accumulate = accumulate_for(BATCH, NBS)
        self.last_opt_step = -1
        self.steps = 0
        self.records: list[tuple[int, list[float], float, int]] = []

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        ni = batch_idx + self.trainer.num_training_batches * self.current_epoch
        groups = opt.optimizer.param_groups
        g0 = groups[0]
        momentum = g0["momentum"] if "momentum" in g0 else g0["betas"][0]
        self.records.append((ni, [g["lr"] for g in groups], momentum, self.accumulate))
        self.manual_backward(self.net(batch[0]).pow(2).mean())
        if ni - self.last_opt_step >= self.accumulate:
            opt.step()
            opt.zero_grad()
            self.last_opt_step = ni
            self.steps += 1

    def on_train_epoch_start(self):
        self.optimizers().zero_grad()  # leftover accumulated gradients are dropped, as in YOLOv5

    def on_train_epoch_end(self):
        self.lr_schedulers().step()

    def configure_optimizers(self):
        opt = build_optimizer(self.net, self.optimizer_name, HYP["lr0"], HYP["momentum"], 5e-4)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": build_scheduler(opt, self.lf), "interval": "epoch"},
        }


def fit(module: DummyModule, tmp_path, epochs: int = EPOCHS, nb: int = NB, **trainer_kw) -> L.Trainer:
    data = DataLoader(TensorDataset(torch.randn(nb * 2, 4)), batch_size=2)
    callback = Warmup(
        HYP["warmup_epochs"],
        HYP["wbias"],
        HYP["warmup_momentum"],
        HYP["momentum"],
        BATCH,
        NBS,
        save_dir=tmp_path,
    )
    kw = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=[callback],
        default_root_dir=tmp_path,
        **kw | trainer_kw,
    )
    trainer.fit(module, data)
    return trainer


def yolov5_reference(lf, nb: int, epochs: int, bias_lr: float, sgd: bool = True):
    """YOLOv5's loop written out (reference §1-2): per-iteration lr of each group, momentum, accumulate."""
    params = [nn.Parameter(torch.zeros(1)) for _ in range(3)]
    lr0, m = HYP["lr0"], HYP["momentum"]
    groups = [{"params": [p]} for p in params]
    opt = torch.optim.SGD(groups, lr=lr0, momentum=m, nesterov=True) if sgd else torch.optim.AdamW(groups, lr=lr0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lf)
    sched.last_epoch = -1
    nw = max(round(HYP["warmup_epochs"] * nb), 100)
    accumulate = max(round(NBS / BATCH), 1)
    lrs, moms, accs = [], [], []
    for epoch in range(epochs):
        for i in range(nb):
            ni = i + nb * epoch
            if ni <= nw:
                xi = [0, nw]
                accumulate = max(1, np.interp(ni, xi, [1, NBS / BATCH]).round())
                for j, x in enumerate(opt.param_groups):
                    x["lr"] = np.interp(ni, xi, [bias_lr if j == 0 else 0.0, x["initial_lr"] * lf(epoch)])
                    moms_j = np.interp(ni, xi, [HYP["warmup_momentum"], m])
                    if "momentum" in x:
                        x["momentum"] = moms_j
            lrs.append([x["lr"] for x in opt.param_groups])
            moms.append(opt.param_groups[0]["momentum"] if sgd else moms_j if ni <= nw else m)
            accs.append(accumulate)
        opt.step()
        sched.step()
    return np.array(lrs), np.array(moms), np.array(accs)


def records_as_arrays(module: DummyModule):
    ni = [r[0] for r in module.records]
    assert ni == list(range(len(ni)))
    return (
        np.array([r[1] for r in module.records]),
        np.array([r[2] for r in module.records]),
        np.array([r[3] for r in module.records]),
    )


@pytest.mark.parametrize("cos", [False, True], ids=["linear", "cosine"])
def test_callback_matches_yolov5_every_iteration(tmp_path, cos):
    lf = lr_lambda(EPOCHS, HYP["lrf"], cos)
    module = DummyModule("SGD", lf)
    fit(module, tmp_path)
    lr, mom, acc = records_as_arrays(module)
    assert lr.shape == (EPOCHS * NB, 3)

    ref_lr, ref_mom, ref_acc = yolov5_reference(lf, NB, EPOCHS, HYP["wbias"])
    np.testing.assert_allclose(lr, ref_lr, rtol=0, atol=1e-9)
    np.testing.assert_allclose(mom, ref_mom, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(acc, ref_acc)

    plan = planned_schedule(
        NB,
        EPOCHS,
        HYP["lr0"],
        lf,
        HYP["warmup_epochs"],
        HYP["wbias"],
        HYP["warmup_momentum"],
        HYP["momentum"],
        BATCH,
        NBS,
    )
    np.testing.assert_allclose(lr, plan.lr, rtol=0, atol=1e-9)
    np.testing.assert_allclose(mom, plan.momentum, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(acc, plan.accumulate)

    # Spot checks of the shape of the curve: warmup spans 12.5 epochs, then the one-epoch lag.
    nw = warmup_iters(HYP["warmup_epochs"], NB)
    assert nw == 100 and nw // NB == 12
    assert lr[0].tolist() == [0.1, 0.0, 0.0] and acc[0] == 1 and mom[0] == pytest.approx(0.8)
    np.testing.assert_allclose(lr[nw : 13 * NB], HYP["lr0"] * lf(12), atol=1e-12)  # rest of epoch 12
    np.testing.assert_allclose(lr[13 * NB : 14 * NB], HYP["lr0"] * lf(12), atol=1e-12)  # epoch 13: lf(12)
    np.testing.assert_allclose(lr[15 * NB :], HYP["lr0"] * lf(14), atol=1e-12)  # epoch 15: lf(14)
    assert set(acc[nw:].tolist()) == {4} and np.all(mom[nw:] == pytest.approx(0.937))

    # The module really stepped the optimizer by YOLOv5's rule.
    assert module.steps == count_optimizer_steps(NB, EPOCHS, BATCH, NBS, nw)
    # lr.png of the planned run.
    png = tmp_path / "lr.png"
    assert png.is_file() and png.stat().st_size > 10_000


def test_adamw_bias_override_and_beta1_ramp(tmp_path):
    """optimizer=auto style: AdamW, pl_module.warmup_bias_lr=0.0 overrides the callback's 0.1."""
    lf = lr_lambda(EPOCHS, HYP["lrf"], False)
    module = DummyModule("AdamW", lf, warmup_bias_lr=0.0)
    fit(module, tmp_path, epochs=14)
    lr, mom, acc = records_as_arrays(module)
    ref_lr, ref_mom, ref_acc = yolov5_reference(lf, NB, 14, 0.0, sgd=False)
    np.testing.assert_allclose(lr, ref_lr, rtol=0, atol=1e-9)
    np.testing.assert_allclose(mom, ref_mom, rtol=0, atol=1e-9)  # beta1 ramped 0.8 -> 0.937
    np.testing.assert_array_equal(acc, ref_acc)
    assert lr[0].tolist() == [0.0, 0.0, 0.0]
    betas = module.optimizers().optimizer.param_groups[2]["betas"]
    assert betas[0] == pytest.approx(0.937) and betas[1] == 0.999


def test_optimizer_step_count_short_run(tmp_path):
    """nb=4, 3 epochs, min_iters=5 -> accumulate 1,2,2,3,3,4,4..: steps at ni 0, 2, 6, 10 (hand-checked)."""
    module = DummyModule("SGD", lr_lambda(3, 0.1, False))
    data = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=2)
    callback = Warmup(1.0, 0.1, 0.8, 0.937, BATCH, NBS, min_iters=5, plot=False)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    assert module.steps == count_optimizer_steps(4, 3, BATCH, NBS, warmup_iters(1.0, 4, 5)) == 4
    assert trainer.global_step == 4
    assert [r[3] for r in module.records] == [1, 2, 2, 3, 3, 4, 4, 4, 4, 4, 4, 4]


def test_logs_every_step(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    lf = lr_lambda(3, HYP["lrf"], False)
    module = DummyModule("SGD", lf)
    logger = CSVLogger(tmp_path, name="", version="")
    trainer = fit(module, tmp_path, epochs=3, logger=logger, log_every_n_steps=1)
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr/pg1")]
    assert len(rows) == 3 * NB
    lr, mom, acc = records_as_arrays(module)
    np.testing.assert_allclose([float(r["lr/pg1"]) for r in rows], lr[:, 1], rtol=1e-6)
    np.testing.assert_allclose([float(r["momentum"]) for r in rows], mom, rtol=1e-6)
    np.testing.assert_array_equal([float(r["accumulate"]) for r in rows], acc)
    assert trainer.callback_metrics["lr/pg0"] == pytest.approx(lr[-1, 0])


def test_missing_scheduler_is_a_clear_error(tmp_path, caplog):
    class NoScheduler(DummyModule):
        def configure_optimizers(self):
            return build_optimizer(self.net, "SGD", 0.01, 0.9, 0.0)

    caplog.set_level(logging.ERROR)
    with pytest.raises(RuntimeError, match="LambdaLR scheduler"):
        fit(NoScheduler("SGD", None), tmp_path, epochs=1)
