"""A sampler that yields ``(index, epoch)`` so each sample knows its epoch, with DDP sharding built in."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` for this rank's share of ``range(n)``; Lightning calls ``set_epoch``.

    With ``shuffle`` the order is a permutation seeded by the pair ``(seed, epoch)`` through numpy's SeedSequence.
    (DistributedSampler seeds with ``seed + epoch``, which gives seed s at epoch e+1 the order of seed s+1 at epoch e:
    runs of neighbouring seeds would share every epoch's order but one, and their spread would look narrower.) The list
    is padded to a multiple of ``world_size`` and rank r takes every world_size-th item starting at r. Padding
    repeats the first items when shuffling and the last item otherwise, so that under DDP each rank's k-th
    batch of a rect (unshuffled) dataset comes from one rect group of ``batch * world_size`` images.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, epoch: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = int(epoch)
        self.num_samples = math.ceil(n / world_size) if n else 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used for the shuffle and passed along with every index."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2, np.uint32)
            g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            indices = torch.randperm(self.n, generator=g).tolist()
        else:
            indices = list(range(self.n))
        pad = self.num_samples * self.world_size - self.n
        if pad:
            fill = (indices * math.ceil(pad / self.n))[:pad] if self.shuffle else [indices[-1]] * pad
            indices += fill
        epoch = self.epoch
        return iter([(i, epoch) for i in indices[self.rank :: self.world_size]])


class BlockShardSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, 0)`` for this rank's share of ``range(n)`` in order, without padding or repeats.

    ``range(n)`` is cut into groups of ``batch * world_size`` (a rect dataset's batch-shape groups when it was built
    with that batch), and rank r takes the r-th block of ``batch`` of each group. So each rank's k-th batch lies in
    group k, every image gets the letterbox shape a 1-process run with batch ``batch * world_size`` gives it, and
    sorting by (k, rank, position) restores the dataset order. Ranks may get different numbers of batches."""

    def __init__(self, n: int, *, batch: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.n, self.batch, self.rank, self.world_size = n, batch, rank, world_size
        self.indices = [
            i for start in range(rank * batch, n, batch * world_size) for i in range(start, min(start + batch, n))
        ]

    def set_epoch(self, epoch: int) -> None:
        """Validation order does not depend on the epoch."""

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(i, 0) for i in self.indices])
