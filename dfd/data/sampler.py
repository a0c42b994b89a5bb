"""A batch sampler whose order is a function of (seed, epoch), so a run resumes mid-epoch exactly."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Shuffled batches for one epoch, shard ``rank`` of ``world_size``, starting at batch ``start``.

    The permutation depends only on ``seed + epoch``; incomplete last batches are dropped.
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size < batch_size * world_size:
            raise ValueError(f"{size} training images cannot fill one batch of {batch_size} on {world_size} process(es)")
        self.size, self.batch_size = size, batch_size
        self.seed, self.epoch, self.rank, self.world_size, self.start = seed, epoch, rank, world_size, start

    @staticmethod
    def batches_per_epoch(size: int, batch_size: int, world_size: int = 1) -> int:
        return (size // world_size) // batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch(self.size, self.batch_size, self.world_size) - self.start

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=g)
        per_rank = self.size // self.world_size
        shard = order[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()
        n = self.batches_per_epoch(self.size, self.batch_size, self.world_size)
        for b in range(self.start, n):
            yield shard[b * self.batch_size : (b + 1) * self.batch_size]
