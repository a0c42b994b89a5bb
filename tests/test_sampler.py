"""Tests for dfd.data.EpochBatchSampler: deterministic epochs, aspect-ratio groups, shards, resumption."""
from __future__ import annotations

import pytest

from dfd.data import EpochBatchSampler

# 23 images, interleaved: 9 of group 0 and 14 of group 1, sizes that divide no batch evenly.
GROUPS = [0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0]


def _indices(batches: list[list[tuple[int, int]]]) -> list[list[int]]:
    return [[i for i, _ in batch] for batch in batches]


def test_group_sizes_are_uneven() -> None:
    assert sorted(GROUPS.count(g) for g in (0, 1)) == [9, 14]


def test_plain_epochs_are_deterministic_and_resume() -> None:
    full = list(EpochBatchSampler(20, 3, seed=1, epoch=2))
    assert len(full) == 6 == EpochBatchSampler.batches_per_epoch(20, 3)
    flat = [i for batch in _indices(full) for i in batch]
    assert len(set(flat)) == 18 and all(0 <= i < 20 for i in flat)  # the incomplete last batch is dropped
    assert list(EpochBatchSampler(20, 3, seed=1, epoch=2)) == full
    assert list(EpochBatchSampler(20, 3, seed=1, epoch=2, start=4)) == full[4:]
    assert len(EpochBatchSampler(20, 3, seed=1, epoch=2, start=4)) == 2
    assert _indices(full) != _indices(list(EpochBatchSampler(20, 3, seed=1, epoch=3)))
    assert _indices(full) != _indices(list(EpochBatchSampler(20, 3, seed=2, epoch=2)))


def test_plain_shards_are_disjoint() -> None:
    shards = [_indices(list(EpochBatchSampler(20, 2, seed=0, epoch=0, rank=r, world_size=2))) for r in range(2)]
    a = {i for b in shards[0] for i in b}
    b = {i for b in shards[1] for i in b}
    assert not a & b and len(a) == len(b) == 10


@pytest.mark.parametrize(("batch_size", "world_size"), [(1, 1), (2, 1), (4, 1), (2, 2), (3, 2), (2, 4)])
def test_grouped_batches_cover_every_image_once_padded(batch_size: int, world_size: int) -> None:
    ranks = [
        list(EpochBatchSampler(23, batch_size, seed=5, epoch=1, rank=r, world_size=world_size, groups=GROUPS))
        for r in range(world_size)
    ]
    n = EpochBatchSampler.batches_per_epoch(23, batch_size, world_size, GROUPS)
    per_step = batch_size * world_size
    assert n == -(-9 // per_step) + -(-14 // per_step)
    assert all(len(batches) == n for batches in ranks)
    seen: list[int] = []
    for step in range(n):
        global_batch = [pair for batches in ranks for pair in batches[step]]
        assert all(len(batches[step]) == batch_size for batches in ranks)
        assert len({GROUPS[i] for i, _ in global_batch}) == 1, "a global batch mixes aspect groups"
        seen += [i for i, _ in global_batch]
    assert set(seen) == set(range(23)), "an image was dropped"
    # Padding repeats images of the same group only as far as needed (mmdetection's rule).
    for g, count in ((0, 9), (1, 14)):
        members = [i for i in seen if GROUPS[i] == g]
        assert len(members) == -(-count // per_step) * per_step
        assert max(members.count(i) for i in set(members)) <= -(-len(members) // count)


def test_grouped_shards_are_disjoint_within_each_global_batch() -> None:
    r0, r1 = (list(EpochBatchSampler(23, 2, seed=0, epoch=0, rank=r, world_size=2, groups=GROUPS)) for r in range(2))
    for a, b in zip(_indices(r0), _indices(r1)):
        assert len(a) == len(b) == 2 and len({GROUPS[i] for i in a + b}) == 1
        assert len(set(a + b)) == 4  # each group holds at least one global batch of images
    # A group smaller than a global batch is repeated inside it, on both ranks if need be.
    small = [1] * 3 + [0] * 20
    r0, r1 = (list(EpochBatchSampler(23, 2, seed=0, epoch=0, rank=r, world_size=2, groups=small)) for r in range(2))
    tiny = [a + b for a, b in zip(_indices(r0), _indices(r1)) if small[a[0]] == 1]
    assert len(tiny) == 1 and sorted(set(tiny[0])) == [0, 1, 2] and len(tiny[0]) == 4


def test_grouped_epochs_are_deterministic_and_resume() -> None:
    def make(**kw: int) -> EpochBatchSampler:
        return EpochBatchSampler(23, 2, **{"seed": 7, "epoch": 3, "groups": GROUPS, **kw})

    full = list(make())
    assert len(full) == len(make()) == make().batches_per_epoch(23, 2, 1, GROUPS) == 5 + 7
    assert list(make()) == full
    for k in (0, 1, 5, len(full)):
        assert list(make(start=k)) == full[k:] and len(make(start=k)) == len(full) - k
    assert _indices(list(make(epoch=4))) != _indices(full)
    assert _indices(list(make(seed=8))) != _indices(full)
    # The global batches are shuffled across groups, not all of group 0 first.
    order = [GROUPS[batch[0][0]] for batch in full]
    assert order != sorted(order) and order != sorted(order, reverse=True)


def test_sample_seeds() -> None:
    full = list(EpochBatchSampler(23, 2, seed=7, epoch=3, groups=GROUPS))
    seeds = [s for batch in full for _, s in batch]
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)
    assert len(set(seeds)) == len(seeds), "positions should get distinct seeds"
    # A seed belongs to (seed, epoch, position): rank 1 of a 2-rank world sees the seeds of its slots.
    two = [list(EpochBatchSampler(23, 1, seed=7, epoch=3, rank=r, world_size=2, groups=GROUPS)) for r in range(2)]
    assert [s for batch in full for _, s in batch] == [s for b0, b1 in zip(*two) for _, s in b0 + b1]
    other = [s for batch in EpochBatchSampler(23, 2, seed=7, epoch=4, groups=GROUPS) for _, s in batch]
    assert not set(other) & set(seeds)


def test_batches_per_epoch_matches_iteration() -> None:
    for size, batch_size, world_size in ((20, 3, 1), (23, 2, 2), (23, 4, 3), (7, 2, 1)):
        for groups in (None, GROUPS[:size]):
            n = EpochBatchSampler.batches_per_epoch(size, batch_size, world_size, groups)
            for rank in range(world_size):
                sampler = EpochBatchSampler(
                    size, batch_size, seed=0, epoch=0, rank=rank, world_size=world_size, groups=groups
                )
                assert len(list(sampler)) == len(sampler) == n


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatchSampler(3, 2, seed=0, epoch=0, world_size=2)
    with pytest.raises(ValueError, match="groups has 2 entries"):
        EpochBatchSampler(3, 1, seed=0, epoch=0, groups=[0, 1])
    with pytest.raises(ValueError, match="start=9"):
        EpochBatchSampler(10, 2, seed=0, epoch=0, start=9)
    with pytest.raises(ValueError, match="rank"):
        EpochBatchSampler(10, 2, seed=0, epoch=0, rank=2, world_size=2)
    # With groups even a tiny set fills a batch (padded), as mmdetection's GroupSampler does.
    assert list(EpochBatchSampler(1, 4, seed=0, epoch=0, groups=[1]))[0][0][0] == 0
