"""`python -m detector.export`: ONNX (the requested opset, checked with onnxruntime) and TorchScript files that give
the checkpoint's outputs to 1e-4; settings it cannot honour are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from detector import CONF_DIR
from detector.checkpoint_file import load_checkpoint, model_from_checkpoint
from detector.export import ExportError, InferenceOutput, export


def compose_export(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="export", overrides=overrides)


def reference(ckpt, x: torch.Tensor) -> np.ndarray:
    module, _ = model_from_checkpoint(load_checkpoint(ckpt))
    with torch.no_grad():
        return InferenceOutput(module.model).eval()(x).numpy()


def test_onnx_writes_the_requested_opset_and_matches_the_checkpoint(trained_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ckpt = trained_run / "weights" / "best.ckpt"
    for opset, dynamic in ((12, False), (17, True)):
        out = tmp_path / f"o{opset}"
        path = export(compose_export([f"ckpt={ckpt}", f"run_dir={out}", f"opset={opset}", f"dynamic={dynamic}",
                                      "device=cpu"]))  # fmt: skip
        assert path == out / "best.onnx"
        assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [opset]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        # another input than the export's own check; with dynamic axes another batch and shape too
        x = torch.rand((2, 3, 96, 64) if dynamic else (1, 3, 64, 64), generator=torch.Generator().manual_seed(5))
        got, ref = session.run(None, {"images": x.numpy()})[0], reference(ckpt, x)
        assert got.shape == ref.shape == ((2, 378, 11) if dynamic else (1, 252, 11))  # 3 anchors x cells of 3 levels
        assert np.allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_torchscript_matches_the_checkpoint(trained_run, tmp_path):
    ckpt = trained_run / "weights" / "last.ckpt"
    path = export(compose_export([f"ckpt={ckpt}", f"run_dir={tmp_path}", "format=torchscript", "device=cpu"]))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        scripted = torch.jit.load(str(path))
        got = scripted(x).numpy()
    assert path.name == "last.torchscript" and np.allclose(got, reference(ckpt, x), rtol=1e-4, atol=1e-4)
    assert "batch_norm" not in str(scripted.inlined_graph)  # folded into the convs, as YOLOv5 exports


def test_settings_it_cannot_honour_are_named(trained_run, tmp_path):
    ckpt = trained_run / "weights" / "last.ckpt"
    with pytest.raises(ExportError, match="format=tflite"):
        export(compose_export([f"ckpt={ckpt}", f"run_dir={tmp_path}", "format=tflite"]))
    with pytest.raises(ExportError, match="half=true needs a CUDA device"):
        export(compose_export([f"ckpt={ckpt}", f"run_dir={tmp_path}", "half=true", "device=cpu"]))
    with pytest.raises(ExportError, match="imgsz=70 is not a multiple"):
        export(compose_export([f"ckpt={ckpt}", f"run_dir={tmp_path}", "imgsz=70", "device=cpu"]))
