"""Config composition: every group option composes, bad keys fail with their name, hyp files are YOLOv5's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from detector.run_config import ConfigError, load_hyp_file, prepare_config, resolve_precision
from tests.helpers import CONF_DIR, compose_train

GROUPS = ("hyp", "model", "trainer", "callbacks", "logger", "augment")
HYP_KEYS = (
    "lr0 lrf momentum weight_decay warmup_epochs warmup_momentum warmup_bias_lr box cls cls_pw obj obj_pw iou_t "
    "anchor_t anchors fl_gamma hsv_h hsv_s hsv_v degrees translate scale shear perspective flipud fliplr mosaic "
    "mixup copy_paste"
).split()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group, tmp_path):
    names = options(group)
    assert names, f"no options in conf/{group}"
    for name in names:
        cfg = compose_train([f"{group}={name}", f"run_dir={tmp_path}"])
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_expected_options_exist():
    assert {"scratch", "scratch-low", "scratch-med", "scratch-high", "Objects365", "VOC", "no-augmentation"} <= set(
        options("hyp")
    )
    assert {f"yolov5{s}" for s in "nsmlx"} <= set(options("model"))
    assert {"default", "cpu", "gpu", "ddp"} <= set(options("trainer"))


def test_top_level_keys(tmp_path):
    cfg = compose_train([f"run_dir={tmp_path}"])
    for key in ("epochs", "batch_size", "imgsz", "workers", "seed", "optimizer", "cos_lr", "ckpt_path", "data"):
        assert key in cfg
    assert cfg.data == "shapes"
    assert cfg.trainer.max_epochs == cfg.epochs


@pytest.mark.parametrize("name", ["scratch-low", "scratch-med", "scratch-high", "Objects365", "VOC", "scratch"])
def test_hyp_files_have_every_yolov5_key(name, tmp_path):
    cfg = compose_train([f"hyp={name}", f"run_dir={tmp_path}"])
    assert list(cfg.hyp.keys()) == HYP_KEYS


def test_hyp_values_match_yolov5():
    load = lambda n: OmegaConf.load(Path(CONF_DIR) / "hyp" / f"{n}.yaml")  # noqa: E731
    low, med, high, voc, o365, noaug, v5 = (
        load(n)
        for n in ("scratch-low", "scratch-med", "scratch-high", "VOC", "Objects365", "no-augmentation", "scratch")
    )
    assert (low.lrf, low.cls, low.obj, low.scale, low.mixup) == (0.01, 0.5, 1.0, 0.5, 0.0)
    assert (med.lrf, med.cls, med.obj, med.scale, med.mixup, med.copy_paste) == (0.1, 0.3, 0.7, 0.9, 0.1, 0.0)
    assert high.copy_paste == 0.1
    assert (voc.lr0, voc.momentum, voc.anchors, voc.mosaic) == (0.00334, 0.74832, 3.412, 0.85834)
    assert (o365.lr0, o365.anchor_t, o365.anchors) == (0.00258, 3.44, 3.2)
    assert noaug.mosaic == 0.0 and noaug.fliplr == 0.0 and noaug.hsv_s == 0
    assert v5.lrf == 0.2 and {k: v for k, v in v5.items() if k != "lrf"} == {k: v for k, v in low.items() if k != "lrf"}


def test_every_trainer_flag_is_overridable(tmp_path):
    import inspect

    import lightning

    owned = {"self", "logger", "callbacks", "default_root_dir", "accumulate_grad_batches", "model_registry"}
    owned |= {"gradient_clip_val", "gradient_clip_algorithm"}
    flags = set(inspect.signature(lightning.Trainer.__init__).parameters) - owned
    cfg = compose_train([f"run_dir={tmp_path}", "trainer.limit_train_batches=4", "trainer.max_time=00:00:10:00"])
    assert flags <= set(cfg.trainer), sorted(flags - set(cfg.trainer))
    assert cfg.trainer.limit_train_batches == 4


def test_misspelt_key_fails_naming_it(tmp_path):
    with pytest.raises(ConfigCompositionException) as e:
        compose_train(["hyp.lr_0=0.1", f"run_dir={tmp_path}"])
    assert "lr_0" in str(e.value)
    with pytest.raises(ConfigCompositionException) as e:
        compose_train(["epoch=3", f"run_dir={tmp_path}"])
    assert "epoch" in str(e.value)


def test_hyp_file_merges_yolov5_hyp_yaml(tmp_path):
    cfg = compose_train([f"run_dir={tmp_path}"])
    f = tmp_path / "hyp_evolve.yaml"
    f.write_text("lr0: 0.0123\nmosaic: 0.5\nanchors: 3\n")
    hyp = load_hyp_file(f, cfg.hyp)
    assert (hyp.lr0, hyp.mosaic, hyp.anchors, hyp.lrf) == (0.0123, 0.5, 3, cfg.hyp.lrf)
    f.write_text("lr_0: 0.1\n")
    with pytest.raises(ConfigError, match="lr_0.*lr0"):
        load_hyp_file(f, cfg.hyp)
    with pytest.raises(ConfigError, match="no such file"):
        load_hyp_file(tmp_path / "missing.yaml", cfg.hyp)


def test_prepare_config_checks_choices(tmp_path):
    cfg = compose_train([f"run_dir={tmp_path}", "optimizer=sgd"])
    with pytest.raises(ConfigError, match="optimizer=sgd"):
        prepare_config(cfg)
    cfg = compose_train([f"run_dir={tmp_path}", "cache=gpu"])
    with pytest.raises(ConfigError, match="cache=gpu"):
        prepare_config(cfg)
    cfg = compose_train([f"run_dir={tmp_path}", "trainer=cpu", "trainer.sync_batchnorm=true"])
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs CUDA"):
        prepare_config(cfg)
    for bad in ("seed=-1", "seed=4294967296"):
        with pytest.raises(ConfigError, match="seed="):
            prepare_config(compose_train([f"run_dir={tmp_path}", bad]))
    for bad in ("freeze=abc", "freeze=-1", "freeze=[1,x]"):
        with pytest.raises(ConfigError, match="freeze="):
            prepare_config(compose_train([f"run_dir={tmp_path}", bad]))
    prepare_config(compose_train([f"run_dir={tmp_path}", "freeze=[0,1,2]"]))
    f = tmp_path / "h.yaml"
    f.write_text("lr0: 0.02\n")
    cfg = prepare_config(compose_train([f"run_dir={tmp_path}", f"hyp_file={f}"]))
    assert cfg.hyp.lr0 == 0.02 and cfg.trainer.precision in ("32-true", "16-mixed")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_epochs=5"], "trainer.max_epochs=5 differs from epochs=40"),
        (["hyp.anchors=3", "autoanchor=false"], "hyp.anchors=3 asks AutoAnchor"),
        (["hyp=VOC", "callbacks.autoanchor=null"], r"hyp.anchors=3.412 asks AutoAnchor"),
    ],
)
def test_prepare_config_refuses_settings_with_two_owners(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        prepare_config(compose_train([f"run_dir={tmp_path}", *overrides]))
    prepare_config(compose_train([f"run_dir={tmp_path}", "epochs=5", "trainer.max_epochs=5", "hyp.anchors=3"]))


def test_dropping_a_recipe_callback_is_said(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="detector.run_config"):
        prepare_config(compose_train([f"run_dir={tmp_path}"]))
        assert not caplog.records
        prepare_config(compose_train([f"run_dir={tmp_path}", "callbacks.ema=null"]))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["callbacks.ema is off"]


def test_resolve_precision():
    assert resolve_precision(OmegaConf.create({"precision": "bf16-mixed"})) == "bf16-mixed"
    assert resolve_precision(OmegaConf.create({"precision": "auto", "accelerator": "cpu"})) == "32-true"


def test_info_logs_come_from_rank_zero_only(monkeypatch):
    import logging

    from lightning.pytorch.utilities import rank_zero_only

    from detector.rank_logging import filter_to_rank_zero

    logger = logging.getLogger("detector.test_rank")
    logger.propagate = False
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    filter_to_rank_zero(logger)
    filter_to_rank_zero(logger)  # idempotent
    assert len(handler.filters) == 1
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger.info("rank 1 info")
    logger.warning("rank 1 warning")
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    logger.info("rank 0 info")
    assert records == ["rank 1 warning", "rank 0 info"]
