"""Batches whose loss is not finite: skipped with a warning, and ``max_bad_steps`` of them in a row stop training.

The flag of each batch stays on the device; the host reads it (a wait for the device) only where it must decide, at
most once per optimizer step, together with the flags of the batches before it. A batch whose flag is read later is
dropped on the device instead: its gradients zeroed bit for bit (:func:`zero_if`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # an integer dtype per element size


class NonFiniteBatches:
    """Counts the non-finite flags of the training batches in batch order, whenever the host reads them."""

    def __init__(self, max_bad_steps: int) -> None:
        self.max_bad_steps = int(max_bad_steps)
        self.bad_steps = 0  # consecutive batches whose loss was not finite
        self.good_batches = 0  # finite batches read since the last take_good_batches
        self._deferred: list[tuple[int, int, torch.Tensor]] = []  # (epoch, batch, flag) not read yet

    @staticmethod
    def flag(loss: torch.Tensor, strategy: Any, world_size: int) -> torch.Tensor:
        """(1,) tensor, 1.0 when this batch's loss (on any rank) is not finite, else 0.0; on the device, not read."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if world_size > 1:
            bad = strategy.reduce(bad, reduce_op="max")  # every rank skips together
        return bad

    def defer(self, epoch: int, batch_idx: int, bad: torch.Tensor) -> None:
        """Keep a batch's flag for the next :meth:`read`."""
        self._deferred.append((epoch, batch_idx, bad))

    def read(self, *extra: torch.Tensor) -> list[float]:
        """Copy the deferred flags and the one-element tensors ``extra`` to the host in one read (none when there is
        nothing to read), count the flags in batch order and return the values of ``extra``."""
        deferred, self._deferred = self._deferred, []
        tensors = [flag for *_, flag in deferred] + list(extra)
        if not tensors:
            return []
        values = torch.cat([t.reshape(1) for t in tensors]).tolist()
        for (epoch, batch_idx, _), value in zip(deferred, values, strict=False):
            self.count(epoch, batch_idx, value != 0)
        return values[len(deferred) :]

    def take_good_batches(self) -> int:
        """The finite batches read since the last call (the epoch's, when called at its end)."""
        good, self.good_batches = self.good_batches, 0
        return good

    def count(self, epoch: int, batch_idx: int, bad: bool) -> bool:
        """Count one read flag; returns ``bad``. A bad batch is reported, and ``max_bad_steps`` of them in a row stop
        training with an error (weights/last.ckpt keeps the last finished epoch)."""
        if not bad:
            self.bad_steps = 0
            self.good_batches += 1
            return False
        self.bad_steps += 1
        log.warning("epoch %d batch %d: loss is not finite, batch skipped (%d in a row)", epoch, batch_idx,
                    self.bad_steps)  # fmt: skip
        if self.bad_steps >= self.max_bad_steps:
            raise FloatingPointError(
                f"training stopped: the loss was not finite for {self.bad_steps} batches in a row (max_bad_steps); "
                "weights/last.ckpt holds the last finished epoch. Lower hyp.lr0 or check the labels"
            )
        return True


def zero_if(flag: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Zero ``tensors`` in place if the one-element ``flag`` is nonzero, else leave them bit for bit, without the host
    reading ``flag``: their bits (integer views) are multiplied by 0 or 1, as a float multiply by 0 would keep the
    NaN and inf of a bad batch's gradients."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        bits = t.view(_BITS[t.element_size()])
        groups.setdefault((bits.device, bits.dtype), []).append(bits)
    for (device, dtype), views in groups.items():
        torch._foreach_mul_(views, (flag.reshape(()) == 0).to(device, dtype))
