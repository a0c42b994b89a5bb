"""Batching: an epoch batch sampler whose order is a pure function of (seed, epoch), and ``collate``.

A run resumes mid-epoch exactly (``start`` skips the batches already trained on), whatever the
number of loader workers: each yielded item is an ``(index, sample_seed)`` pair and the dataset
seeds its random transforms with ``sample_seed`` (see :class:`~dfd.data.CocoDetection`).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

_ORDER, _SEEDS = 0, 1  # independent random streams of one (seed, epoch)


def collate(batch: list[tuple[Any, dict[str, Any]]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Keep images and targets as lists: detection images differ in size."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """A numpy generator that depends only on (seed, epoch, stream), well mixed by SeedSequence."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) % 2**64, int(epoch) % 2**64, stream]))


def _group_members(groups: Sequence[int]) -> list[np.ndarray]:
    """Indices of each group, groups in ascending value order, empty groups left out."""
    flags = np.asarray(groups, dtype=np.int64).reshape(-1)
    return [np.flatnonzero(flags == value) for value in np.unique(flags)]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """One epoch of batches of ``(index, sample_seed)`` pairs for process ``rank`` of ``world_size``.

    The epoch is a list of *global batches* of ``batch_size * world_size`` indices; rank ``r``
    takes slice ``[r * batch_size, (r + 1) * batch_size)`` of each. The list is a pure function of
    ``(seed, epoch)``; ``start`` skips its first ``start`` batches (mid-epoch resumption).

    Without ``groups``: a random permutation cut into global batches, the incomplete last one
    dropped (torch's ``DistributedSampler(drop_last=True)`` + ``BatchSampler(drop_last=True)``).

    With ``groups`` (one int per index, e.g. :meth:`CocoDetection.aspect_groups`): every global
    batch holds one group only, as mmdetection's ``GroupSampler`` / ``DistributedGroupSampler``
    (the paper's toolchain; there each GPU batch is one group, here the whole global batch is).
    Each group is shuffled and padded to a multiple of the global batch by repeating its own
    shuffled indices from the start (``DistributedGroupSampler``'s padding), so no image is
    dropped; the order of the global batches is then shuffled.

    ``sample_seed`` is drawn per position of the epoch from a second stream of (seed, epoch), in
    ``[0, 2**63)``; a padded repeat of an image gets its own seed.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        groups: Sequence[int] | None = None,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        if groups is not None and len(groups) != size:
            raise ValueError(f"groups has {len(groups)} entries for a dataset of {size} images")
        n = self.batches_per_epoch(size, batch_size, world_size, groups)
        if n == 0:
            raise ValueError(f"{size} training images cannot fill one batch of {batch_size} on {world_size} process(es)")
        if not 0 <= start <= n:
            raise ValueError(f"start={start} is outside the {n} batches of an epoch")
        self.size, self.batch_size = int(size), int(batch_size)
        self.seed, self.epoch, self.rank, self.world_size, self.start = seed, epoch, rank, world_size, start
        self.groups = None if groups is None else [int(g) for g in groups]

    @staticmethod
    def batches_per_epoch(size: int, batch_size: int, world_size: int = 1, groups: Sequence[int] | None = None) -> int:
        """Batches each rank gets per epoch: ``size // (batch_size * world_size)`` without groups,
        the sum over groups of ``ceil(group size / (batch_size * world_size))`` with them."""
        per_step = batch_size * world_size
        if groups is None:
            return size // per_step
        return sum(math.ceil(len(members) / per_step) for members in _group_members(groups))

    def global_batches(self) -> np.ndarray:
        """The epoch's index order as an int64 array [batches, batch_size * world_size]."""
        per_step = self.batch_size * self.world_size
        rng = _rng(self.seed, self.epoch, _ORDER)
        if self.groups is None:
            order = rng.permutation(self.size)
            n = self.size // per_step
            return order[: n * per_step].reshape(n, per_step)
        chunks = []
        for members in _group_members(self.groups):
            shuffled = members[rng.permutation(len(members))]
            padded = np.resize(shuffled, math.ceil(len(members) / per_step) * per_step)  # cyclic repeat
            chunks.append(padded.reshape(-1, per_step))
        stacked = np.concatenate(chunks)
        return stacked[rng.permutation(len(stacked))]

    def sample_seeds(self, batches: int) -> np.ndarray:
        """Seeds in [0, 2**63) for every position of the epoch, int64 [batches, batch_size * world_size]."""
        rng = _rng(self.seed, self.epoch, _SEEDS)
        return rng.integers(0, 2**63 - 1, size=(batches, self.batch_size * self.world_size), dtype=np.int64, endpoint=True)

    def __len__(self) -> int:
        return self.batches_per_epoch(self.size, self.batch_size, self.world_size, self.groups) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.global_batches()
        seeds = self.sample_seeds(len(order))
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for b in range(self.start, len(order)):
            yield [(int(i), int(s)) for i, s in zip(order[b, lo:hi], seeds[b, lo:hi])]

