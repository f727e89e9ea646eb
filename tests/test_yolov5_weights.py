"""YOLOv5 7.0 ``.pt`` files in our model: read without running their pickled code, the same outputs as YOLOv5's own
model on a fixed input, usable by ``train weights=`` (with ``freeze``), ``val``, ``predict`` and ``export``.

tests/data/yolov5_pt/ was made by YOLOv5 7.0's train.py (bench/yolov5_pt_reference.py): ``running.pt`` after one
epoch (raw weights and EMA), ``final.pt`` at the end (stripped), and YOLOv5's outputs and val.py metrics."""

from __future__ import annotations

import builtins
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from detector import CONF_DIR
from detector.checkpoint_file import CheckpointError, load_checkpoint, model_from_checkpoint
from detector.models import DetectionModel
from detector.run_config import ConfigError
from detector.weights_transfer import transfer_weights
from detector.yolov5_weights import is_yolov5_file, model_config, read_pickled, read_yolov5_weights, yaml_args
from tests.helpers import compose_train

DIR = Path(__file__).parent / "data" / "yolov5_pt"
TINY = ["model.width_multiple=0.0625"]  # the reference model's width (depth 0.33 as yolov5n)


@pytest.fixture(scope="module")
def reference():
    return torch.load(DIR / "reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def rgb_data(tmp_path_factory):
    """The reference's 16 images (3 classes r, g, b) in a YOLOv5 data yaml, copied out of tests/data."""
    root = tmp_path_factory.mktemp("rgb")
    for part in ("images", "labels"):
        shutil.copytree(DIR.parent / "lockstep" / part, root / part)
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images",
                                                    "names": ["r", "g", "b"]}))  # fmt: skip
    return root / "data.yaml"


def eval_outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_same_outputs(model: torch.nn.Module, x: torch.Tensor, expected: dict) -> None:
    decoded, raw = eval_outputs(model, x)
    # 1e-5 plus float32 rounding of values up to ~100 px (decoded sizes): CPUs differ by an ulp or two
    torch.testing.assert_close(decoded, expected["decoded"], rtol=1e-6, atol=1e-5)
    for ours, theirs in zip(raw, expected["raw"], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["running", "final"])
@pytest.mark.parametrize("use", ["inference", "transfer"])
def test_our_model_gives_yolov5s_outputs(reference, name, use):
    weights = read_yolov5_weights(DIR / f"{name}.pt", use)
    assert weights.entry == ("ema" if (name, use) == ("running", "inference") else "model")
    assert weights.nc == 3 and weights.names == {0: "r", 1: "g", 2: "b"}
    assert len(weights.state_dict) == reference[name]["n_tensors"]
    model = DetectionModel(weights.model_cfg, nc=weights.nc)
    model.load_state_dict(weights.state_dict, strict=True)  # every name maps onto ours
    assert_same_outputs(model, reference["input"], reference[name][use])
    assert "yolov5" not in sys.modules  # nothing of YOLOv5 was imported to read it


def test_yaml_literals_are_read_as_yolov5_reads_them():
    # YOLOv5's model yamls write [None, 2, 'nearest']; yaml keeps 'None' a string, which parse_model evaluates
    assert yaml_args(["None", 2, "nearest"]) == [None, 2, "nearest"]
    assert yaml_args(["nc", "anchors", "False", 1.5]) == ["nc", "anchors", False, 1.5]
    assert yaml_args(["__import__('os').getcwd()"]) == ["__import__('os').getcwd()"]  # never evaluated as code


def test_a_file_trained_from_yolov5s_own_yaml_builds(reference):
    """Files trained from YOLOv5's models/*.yaml (released weights, users' runs) carry Upsample's size as the string
    'None' (the fixture's yaml was written with a real None): the model still builds and gives YOLOv5's outputs."""
    model = read_pickled(DIR / "final.pt")["model"]
    yaml_cfg = dict(model.state["yaml"])
    yaml_cfg["head"] = [[f, n, m, ["None" if a is None else a for a in args]] for f, n, m, args in yaml_cfg["head"]]
    assert any("None" in args for *_, args in yaml_cfg["head"])
    weights = read_yolov5_weights(DIR / "final.pt", "inference")
    layers = model.state["_modules"]["model"].state["_modules"]
    cfg = model_config(yaml_cfg, layers[str(len(layers) - 1)].state, weights.state_dict)
    built = DetectionModel(cfg, nc=weights.nc)
    built.load_state_dict(weights.state_dict, strict=True)
    assert_same_outputs(built, reference["input"], reference["final"]["inference"])


def test_the_running_files_ema_and_raw_weights_differ(reference):
    a, b = reference["running"]["inference"]["decoded"], reference["running"]["transfer"]["decoded"]
    assert (a - b).abs().max() > 1e-4  # so the test above tells the two apart


def test_a_pickle_that_calls_code_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return builtins.exec, (f"open({str(marker)!r}, 'w')",)

    torch.save({"model": Payload(), "epoch": 3}, tmp_path / "evil.pt")
    assert not is_yolov5_file(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt: cannot be read"):
        load_checkpoint(tmp_path / "evil.pt")  # torch's weights_only refuses it
    assert read_pickled(tmp_path / "evil.pt")["epoch"] == 3  # the stand-in reader: exec is an inert stand-in
    assert not marker.exists()


def test_commands_read_a_yolov5_file_as_a_checkpoint(reference):
    module, run = model_from_checkpoint(load_checkpoint(DIR / "final.pt"))
    assert run.imgsz == 64 and run.data is None and module.hparams.nc == 3
    assert_same_outputs(module.model, reference["input"], reference["final"]["inference"])


def test_val_of_a_yolov5_file_gives_yolov5s_metrics(reference, rgb_data, tmp_path):
    from detector.val import validate

    def cfg(extra):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("val", [f"ckpt={DIR / 'final.pt'}", f"run_dir={tmp_path}", "batch_size=16", "workers=0",
                                   "accelerator=cpu", *extra])  # fmt: skip

    with pytest.raises(CheckpointError, match="data="):
        validate(cfg([]))  # a YOLOv5 file names no dataset of ours
    metrics = validate(cfg([f"data={rgb_data}"]))
    for key, value in reference["final"]["val"].items():
        assert metrics[f"metrics/{key}"] == pytest.approx(value, rel=0.02), key


def test_transfer_copies_every_matching_tensor(reference):
    model = DetectionModel(compose_train(TINY).model, nc=3)
    assert transfer_weights(model, DIR / "running.pt", "yolov5n") == reference["running"]["n_tensors"]
    assert_same_outputs(model, reference["input"], reference["running"]["transfer"])  # train.py takes 'model'


def test_new_classes_start_the_detect_outputs_fresh(caplog):
    model = DetectionModel(compose_train(TINY).model, nc=6)
    fresh = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("model.24.m.")}
    with caplog.at_level(logging.INFO, logger="detector.weights_transfer"):
        n = transfer_weights(model, DIR / "final.pt", "yolov5n")
    assert n == len(model.state_dict()) - len(fresh) == 343
    assert all(torch.equal(model.state_dict()[k], v) for k, v in fresh.items())
    assert "trained on 3 classes, the data has 6" in caplog.text and "fresh initialisation" in caplog.text


def test_another_architecture_is_named():
    model = DetectionModel(compose_train([]).model, nc=3)  # yolov5n: 4x wider than the file's
    with pytest.raises(ConfigError, match=r"depth_multiple 0.33, width_multiple 0.0625.*model=yolov5n"):
        transfer_weights(model, DIR / "final.pt", "yolov5n")
    with pytest.raises(CheckpointError, match="weights=.*no such file"):
        transfer_weights(model, DIR / "missing.pt", "yolov5n")


def test_fine_tuning_from_yolov5_with_a_frozen_backbone(rgb_data, tmp_path):
    from detector.train import run

    settings = [
        f"data={rgb_data}",
        f"run_dir={tmp_path}",
        "trainer=cpu",
        "logger=csv",
        "imgsz=64",
        "batch_size=8",
        "workers=0",
        "epochs=1",
        "val.coco=never",
        "autoanchor=false",
        "callbacks.validation_plots=null",
    ]
    run(compose_train([*settings, f"weights={DIR / 'final.pt'}", "freeze=10", *TINY]))
    ckpt = torch.load(tmp_path / "weights" / "last.ckpt", map_location="cpu", weights_only=True)
    trained = ckpt["current_model_state"]  # the raw weights
    start = read_yolov5_weights(DIR / "final.pt", "transfer").state_dict
    params = {n for n, _ in DetectionModel(compose_train(TINY).model, nc=3).named_parameters()}
    frozen = [k for k in params if int(k.split(".")[1]) < 10]
    assert frozen and all(torch.equal(trained[f"model.{k}"], start[k]) for k in frozen)
    trainable = [k for k in params if int(k.split(".")[1]) >= 10]
    assert all(not torch.equal(trained[f"model.{k}"], start[k]) for k in trainable if k.endswith("conv.weight"))


def test_predict_and_export_take_a_yolov5_file(reference, rgb_data, tmp_path):
    from detector.export import export
    from detector.predict import predict

    def cfg(name, extra):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(name, [f"ckpt={DIR / 'final.pt'}", "device=cpu", *extra])

    image = rgb_data.parent / "images" / "im00.png"
    dets = predict(cfg("predict", [f"source={image}", f"run_dir={tmp_path / 'predict'}", "conf=0.001"]))
    assert len(dets["im00"]) > 0 and (tmp_path / "predict" / "labels" / "im00.txt").is_file()
    path = export(cfg("export", [f"run_dir={tmp_path / 'export'}", "format=torchscript", "imgsz=64"]))
    with torch.no_grad():
        got = torch.jit.load(str(path))(reference["input"])
    torch.testing.assert_close(got, reference["final"]["inference"]["decoded"], rtol=0, atol=1e-4)
