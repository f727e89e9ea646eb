"""Rank 0's buffers (BatchNorm running statistics, anchors) copied to every DDP rank: one model on every rank.

YOLOv5's DDP broadcasts rank 0's buffers before every forward (``broadcast_buffers=True``). Under Lightning's manual
optimization that broadcast stops after the first forward: its forward redirection clears DDP's
``require_forward_param_sync`` whenever the gradient sync is off, and then each rank's BatchNorm statistics follow its
own half of the batch, and so do the EMA of them, the validation and the checkpoint. We broadcast explicitly, after
each training forward: rank 0's statistics then evolve exactly as in YOLOv5 (a broadcast from itself changes nothing),
and every rank holds them whenever anything reads them (the EMA update, validation, a checkpoint). The forward itself
does not read them (training-mode BatchNorm normalises by the batch's own statistics).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every buffer of ``module`` with rank ``src``'s, one collective per dtype (no-op outside DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for buf in module.buffers():
        groups.setdefault((buf.dtype, buf.device), []).append(buf)
    receiving = dist.get_rank() != src
    for bufs in groups.values():
        flat = torch.cat([b.detach().reshape(-1) for b in bufs])
        dist.broadcast(flat, src)
        if receiving:  # one multi-tensor copy, not one kernel per buffer (~170 for yolov5s)
            parts = torch.split(flat, [b.numel() for b in bufs])
            torch._foreach_copy_(bufs, [p.view_as(b) for p, b in zip(parts, bufs, strict=True)])
