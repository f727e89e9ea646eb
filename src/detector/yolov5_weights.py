"""YOLOv5's own ``.pt`` weight files (``yolov5s.pt``, a run's ``last.pt``/``best.pt``), read without running any code.

A YOLOv5 ``.pt`` pickles YOLOv5's module objects. torch's ``weights_only`` unpickler refuses them; loading them with
``weights_only=False`` would import and run whatever the file names. Here every class the file names (YOLOv5's,
torch.nn's, numpy's) is replaced by an inert stand-in, :class:`Pickled`, that only keeps the state the pickle hands
it, and the file is read by torch's ``weights_only`` unpickler with those stand-ins allowlisted: tensors and plain
containers are rebuilt, nothing of the named classes runs. The module tree is then walked for its state dict, whose
names (``model.<layer>.<...>``) are our :class:`~detector.models.DetectionModel`'s.
"""

from __future__ import annotations

import ast
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

# (depth_multiple, width_multiple) of YOLOv5's sizes: the name a checkpoint's model is reported under.
SIZES = {(0.33, 0.25): "yolov5n", (0.33, 0.5): "yolov5s", (0.67, 0.75): "yolov5m", (1.0, 1.0): "yolov5l",
         (1.33, 1.25): "yolov5x"}  # fmt: skip


class Pickled:
    """Stand-in for a class named in a YOLOv5 file: holds the constructor arguments and the pickled state, runs
    nothing (no ``__init__``, ``__setstate__`` or ``__reduce__`` of the real class)."""

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Pickled:
        obj = super().__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, dict | None) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots)
        self.state = state if isinstance(state, dict) else {"state": state}

    def __repr__(self) -> str:
        return f"<pickled {self.qualified_name}>"


class Yolov5FileError(ValueError):
    """The file is not a YOLOv5 weight file this reader understands; the message names it."""


def _stand_in(name: str) -> type[Pickled]:
    return type(name.rsplit(".", 1)[-1], (Pickled,), {"qualified_name": name})


def named_globals(path: Path) -> list[str]:
    """The classes and functions a torch zip file's pickle names beyond what ``weights_only`` allows."""
    if not zipfile.is_zipfile(path):
        return []
    return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def is_yolov5_file(path: str | Path) -> bool:
    """True when the file pickles a YOLOv5 model (``…models.yolo.DetectionModel`` or its older name ``Model``)."""
    return any(n.endswith(("models.yolo.DetectionModel", "models.yolo.Model")) for n in named_globals(Path(path)))


def read_pickled(path: str | Path) -> Any:
    """The file's pickle with every non-allowlisted class replaced by a :class:`Pickled` stand-in."""
    path = Path(path)
    stand_ins = [(_stand_in(name), name) for name in named_globals(path)]
    with torch.serialization.safe_globals(stand_ins):
        return torch.load(path, map_location="cpu", weights_only=True)


def module_state_dict(module: Pickled, prefix: str = "") -> dict[str, torch.Tensor]:
    """A pickled ``nn.Module``'s state dict (parameters, persistent buffers, submodules; torch's order)."""
    state = module.state
    out: dict[str, torch.Tensor] = {}
    for name, p in (state.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach()
    transient = state.get("_non_persistent_buffers_set") or set()
    for name, b in (state.get("_buffers") or {}).items():
        if b is not None and name not in transient:
            out[prefix + name] = b
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, Pickled):
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


@dataclass
class Yolov5Weights:
    """A YOLOv5 model as our model takes it: float32 state dict (``model.<layer>.…``), our model config, classes."""

    state_dict: dict[str, torch.Tensor]
    model_cfg: dict[str, Any]
    nc: int
    names: dict[int, str]
    entry: str  # which of the file's models this is: "ema" or "model"
    opt: dict[str, Any] = field(default_factory=dict)  # YOLOv5's training options, when the file has them


def yaml_args(args: list[Any]) -> list[Any]:
    """A layer's arguments as YOLOv5's parse_model reads them: its yaml files write Python literals that yaml leaves
    as strings (``[None, 2, 'nearest']``), which it evaluates. Ours: literals only (``ast.literal_eval``, never
    code), so 'None' is None and names such as 'nearest' or 'nc' stay strings."""
    out = []
    for a in args:
        if isinstance(a, str):
            try:
                a = ast.literal_eval(a)
            except (ValueError, SyntaxError):
                pass
        out.append(a)
    return out


def model_config(yaml_cfg: dict[str, Any], detect_state: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> dict:
    """Our model config for a YOLOv5 model: its layer lists (``nn.Upsample`` named ``Upsample``), multiples, and
    the anchors in pixels from the Detect buffer (AutoAnchor may have changed them after the yaml was written)."""
    layers = {}
    for part in ("backbone", "head"):
        layers[part] = [[f, n, str(m).removeprefix("nn."), yaml_args(args)] for f, n, m, args in yaml_cfg[part]]
    anchors_key = next(k for k in state_dict if k.endswith(".anchors"))
    stride = detect_state.get("stride")
    anchors = state_dict[anchors_key].float()
    if isinstance(stride, torch.Tensor) and stride.numel() == anchors.shape[0]:
        anchors = anchors * stride.float().view(-1, 1, 1)  # grid units -> pixels
    depth, width = float(yaml_cfg["depth_multiple"]), float(yaml_cfg["width_multiple"])
    return {
        "name": SIZES.get((depth, width), "yolov5-custom"),
        "depth_multiple": depth,
        "width_multiple": width,
        "anchors": anchors.tolist(),
        **layers,
    }


def read_yolov5_weights(path: str | Path, use: Literal["inference", "transfer"] = "inference") -> Yolov5Weights:
    """The model in a YOLOv5 ``.pt``: for ``inference`` (val/predict/export) its EMA when it has one, else
    ``model``, as YOLOv5's own loader; for ``transfer`` (``train weights=``) ``model``, as YOLOv5's train.py."""
    path = Path(path)
    try:
        ckpt = read_pickled(path)
    except Exception as e:  # truncated, not a torch file, or a global torch's unpickler blocks outright
        raise Yolov5FileError(f"{path}: cannot be read as a YOLOv5 weight file ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), Pickled):
        raise Yolov5FileError(f"{path}: not a YOLOv5 weight file (no pickled model under 'model')")
    entry = "ema" if use == "inference" and isinstance(ckpt.get("ema"), Pickled) else "model"
    model = ckpt[entry]
    state = model.state
    yaml_cfg = state.get("yaml")
    if not isinstance(yaml_cfg, dict) or not all(k in yaml_cfg for k in ("backbone", "head")):
        raise Yolov5FileError(f"{path}: its model carries no YOLOv5 model yaml (backbone/head)")
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in module_state_dict(model).items()}
    layers = state["_modules"]["model"].state["_modules"]
    detect = layers[str(len(layers) - 1)]
    nc = int(detect.state.get("nc", yaml_cfg.get("nc", 0)))
    names = state.get("names") or {}
    names = dict(enumerate(names)) if isinstance(names, list | tuple) else {int(k): str(v) for k, v in names.items()}
    opt = ckpt.get("opt") if isinstance(ckpt.get("opt"), dict) else {}
    return Yolov5Weights(
        state_dict=state_dict,
        model_cfg=model_config(yaml_cfg, detect.state, state_dict),
        nc=nc,
        names=names or {i: str(i) for i in range(nc)},
        entry=entry,
        opt=opt,
    )
