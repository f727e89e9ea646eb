"""The search space: per hyp key a mutation gain and lower/upper limits, read from a yaml table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detector import CONF_DIR

BASE_ANCHORS = 3.0  # anchors per level a child starts from when the base hyp has anchors: null (YOLOv5's rule)


@dataclass(frozen=True)
class SearchSpace:
    """Genes in table order: ``keys``, with ``gains``, ``lower`` and ``upper`` as float arrays."""

    keys: tuple[str, ...]
    gains: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], source: str = "search space") -> SearchSpace:
        keys, rows = [], []
        for key, row in table.items():
            if not isinstance(row, (list, tuple)) or len(row) != 3:
                raise ValueError(f"{source}: {key} must be [gain, lower, upper], got {row!r}")
            gain, lo, hi = (float(v) for v in row)
            if gain < 0 or lo > hi:
                raise ValueError(f"{source}: {key} needs gain >= 0 and lower <= upper, got {list(row)}")
            keys.append(str(key))
            rows.append((gain, lo, hi))
        if not keys:
            raise ValueError(f"{source} is empty")
        gains, lower, upper = (np.array(col, float) for col in zip(*rows, strict=True))
        return cls(tuple(keys), gains, lower, upper)

    @classmethod
    def load(cls, name_or_path: str | Path) -> SearchSpace:
        """A table by file path, or by name from conf/evolve (``yolov5``)."""
        path = Path(name_or_path).expanduser()
        if not path.suffix and not path.is_file():  # a folder of that name (a YOLOv5 clone) is no table
            path = Path(CONF_DIR) / "evolve" / f"{name_or_path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"search space {name_or_path}: no such file ({path})")
        table = yaml.safe_load(path.read_text())
        if not isinstance(table, Mapping):
            raise ValueError(f"search space {path}: expected a mapping of hyp key -> [gain, lower, upper]")
        return cls.from_mapping(table, str(path))

    def check_keys(self, hyp_keys: list[str]) -> None:
        """Every gene must be a hyp key (a misspelt key would otherwise evolve nothing)."""
        unknown = [k for k in self.keys if k not in hyp_keys]
        if unknown:
            raise ValueError(f"search space keys {unknown} are not hyp keys (hyp has {', '.join(hyp_keys)})")


def base_values(hyp: Mapping[str, Any], space: SearchSpace) -> dict[str, float]:
    """The hyp as evolution columns: every key in hyp order, ``anchors`` moved last with value 3 when the hyp
    has it null (YOLOv5 appends it so); keys outside the space keep their values (gain 0)."""
    out = {k: float(v) for k, v in hyp.items() if v is not None}
    if "anchors" in space.keys and hyp.get("anchors") is None:
        out["anchors"] = BASE_ANCHORS
    missing = [k for k, v in hyp.items() if v is None and k != "anchors"]
    if missing:
        raise ValueError(f"hyp keys {missing} are null: evolution needs a number for every hyp key")
    return out
