"""`python -m detector.export ckpt=... format=onnx|torchscript`: the checkpoint's model as a file for other
runtimes, run once after writing and compared with the checkpoint's own outputs (conf/export.yaml)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from detector import CONF_DIR
from detector.checkpoint_file import CheckpointError, load_checkpoint, model_from_checkpoint
from detector.console import exit_on_user_error, quiet_third_party
from detector.models.inference_copy import inference_copy

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """A setting the export cannot honour, a missing runtime, or an exported file that disagrees; named."""


class InferenceOutput(torch.nn.Module):
    """The model with only its inference output: ``(batch, anchors, 5 + nc)`` boxes in pixels, objectness and
    class scores (YOLOv5's exported ``output0``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> Path:
    """ONNX through torch's TorchScript-based exporter: it writes the requested opset, where the torch.export-based
    default (torch >= 2.9) raises the opset to what it supports and needs onnxscript."""
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "predictions"}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter, chosen on purpose
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(model, x, str(path), opset_version=opset, dynamo=False, input_names=["images"],
                          output_names=["output0"], dynamic_axes=axes if dynamic else None,
                          do_constant_folding=True)  # fmt: skip
    return path


def export_torchscript(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    """A traced TorchScript module (YOLOv5's ``.torchscript``); the trace check is off because the detection head
    caches its anchor grids between calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated upstream, still loads
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.jit.trace(model, x, check_trace=False).save(str(path))
    return path


def run_exported(path: Path, fmt: str, x: torch.Tensor) -> np.ndarray:
    """The exported file's output for ``x``: onnxruntime (CPU) for ONNX, torch.jit.load for TorchScript."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ExportError("checking an ONNX file needs onnxruntime: pip install 'detector[export]'") from e
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": x.cpu().numpy()})[0]
    with torch.no_grad():
        return torch.jit.load(str(path), map_location=x.device)(x).float().cpu().numpy()


def export(cfg: DictConfig, cwd: str | None = None) -> Path:
    """Write ``cfg.ckpt``'s model in ``cfg.format`` into the run folder and check it; returns the file's path."""
    quiet_third_party()
    cwd = cwd or str(Path.cwd())
    if cfg.format not in ("onnx", "torchscript"):
        raise ExportError(f"format={cfg.format}: choose onnx or torchscript")
    module, run = model_from_checkpoint(load_checkpoint(Path(cwd) / str(cfg.ckpt)))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    if cfg.half and device.type != "cuda":
        raise ExportError("half=true needs a CUDA device (device=cuda): float16 convolutions are GPU-only here")
    # BatchNorm folded into the convs, as YOLOv5 exports: a smaller graph with the same outputs (to ~1e-6)
    model = InferenceOutput(inference_copy(module.model, fuse_bn=True, channels_last=False)).to(device).eval()
    model = model.half() if cfg.half else model
    stride = int(module.model.stride.max())
    imgsz = int(cfg.imgsz if cfg.imgsz is not None else run.imgsz)
    if imgsz % stride:
        raise ExportError(f"imgsz={imgsz} is not a multiple of the model's stride {stride}")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(int(cfg.batch_size), 3, imgsz, imgsz, generator=gen).to(device)
    x = x.half() if cfg.half else x
    with torch.no_grad():
        model(x)  # builds the head's grids for this size before tracing
        expected = model(x).float().cpu().numpy()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(str(cfg.ckpt)).stem
    if cfg.format == "onnx":
        path = export_onnx(model, x, run_dir / f"{stem}.onnx", int(cfg.opset), bool(cfg.dynamic))
    else:
        path = export_torchscript(model, x, run_dir / f"{stem}.torchscript")
    got = run_exported(path, cfg.format, x)
    tol = float(cfg.check_tol)
    diff = float(np.abs(got - expected).max())
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=tol, atol=tol):
        raise ExportError(f"{path}: its output differs from the checkpoint's by up to {diff:.3g} (check_tol={tol})")
    opset = f", opset {int(cfg.opset)}" if cfg.format == "onnx" else ""
    log.info("exported %s (%s%s, input %s, output %s); its output matches the checkpoint's (max difference %.3g)",
             path, cfg.format, opset, tuple(x.shape), tuple(expected.shape), diff)  # fmt: skip
    return path


@hydra.main(config_path=CONF_DIR, config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_on_user_error((CheckpointError, ExportError), export, cfg, get_original_cwd())


if __name__ == "__main__":
    main()
