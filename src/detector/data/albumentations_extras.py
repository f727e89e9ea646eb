"""YOLOv5's optional albumentations stage, built from the config's ``{_target_: albumentations.X}`` list."""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detector.data.photometric import to_bgr


class AlbumentationsExtras:
    """YOLOv5's albumentations stage: each transform fires with its own ``p``, seeded from the sample's rng.

    ``transforms`` are albumentations transforms or ``{_target_: albumentations.X, ...}`` mappings.
    Transforms with p = 0 are dropped. When all are pixel-level, each one is called directly on the image
    (boxes cannot change, so the bbox bookkeeping of ``Compose`` is skipped); otherwise a ``Compose`` with
    yolo-format boxes runs.
    """

    def __init__(self, transforms: Sequence[Any] | None):
        built = [_build_transform(t) for t in (transforms or [])]
        self.transforms = [t for t in built if t.p > 0]
        self.image_only = all(isinstance(t, _albumentations().ImageOnlyTransform) for t in self.transforms)
        self.compose = None
        self._lock = threading.Lock()  # transforms keep the rng they were given: one sample at a time
        if self.transforms and not self.image_only:
            A = _albumentations()
            self.compose = A.Compose(
                self.transforms,
                bbox_params=A.BboxParams(format="yolo", label_fields=["class_labels"], clip=True),
            )

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AlbumentationsExtras({', '.join(f'{type(t).__name__}(p={t.p})' for t in self.transforms)})"

    def __call__(self, im: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Apply to a BGR(A) image and (n, 5) normalised [cls, x, y, w, h] labels; returns (image, labels).

        The image comes back unchanged (possibly BGRA) when no transform fires, else as BGR."""
        if self.compose is None:
            for t in self.transforms:
                if rng.random() < t.p:
                    py_rng = random.Random(int(rng.integers(2**32)))
                    with self._lock:
                        t.set_random_state(rng, py_rng)
                        im = t(image=to_bgr(im), force_apply=True)["image"]
            return im, labels
        py_rng = random.Random(int(rng.integers(2**32)))
        with self._lock:
            self.compose.set_random_state(rng, py_rng)
            out = self.compose(image=to_bgr(im), bboxes=labels[:, 1:5], class_labels=labels[:, 0])
        boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        cls = np.asarray(out["class_labels"], np.float32).reshape(-1, 1)
        return np.ascontiguousarray(out["image"]), np.concatenate((cls, boxes), 1)


def _albumentations():
    import albumentations

    return albumentations


def _build_transform(t: Any) -> Any:
    """An albumentations transform from itself or from a ``{_target_: ..., **kwargs}`` mapping."""
    if not isinstance(t, Mapping):
        return t
    if "_target_" not in t:
        raise ValueError(f"albumentations entry {dict(t)} has no _target_ (e.g. _target_: albumentations.Blur)")
    from hydra.utils import instantiate

    try:
        return instantiate(dict(t))
    except Exception as e:
        raise ValueError(f"cannot build albumentations transform {dict(t)}: {e}") from e
