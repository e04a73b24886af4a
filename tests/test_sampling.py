"""Epochs shorter than a pass (`train.epoch_images`): the ablation's cells validate often enough for
the convergence rule while still seeing every training image once per pass."""

from __future__ import annotations

from collections import Counter

import pytest

from spd.data.sampling import EpochSliceSampler, epoch_sampler


def _epoch(sampler: EpochSliceSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_consecutive_epochs_walk_through_each_pass_seeing_every_image_once() -> None:
    sampler = EpochSliceSampler(size=30, images=10, seed=4)
    first_pass = [i for e in range(3) for i in _epoch(sampler, e)]
    assert sorted(first_pass) == list(range(30))
    second_pass = [i for e in range(3, 6) for i in _epoch(sampler, e)]
    assert sorted(second_pass) == list(range(30))
    assert second_pass != first_pass  # each pass reshuffled


def test_an_epoch_that_straddles_two_passes_takes_the_end_of_one_and_the_start_of_the_next() -> None:
    sampler = EpochSliceSampler(size=10, images=4, seed=0)
    seen = Counter(i for e in range(5) for i in _epoch(sampler, e))  # 20 images: exactly two passes
    assert set(seen.values()) == {2} and len(seen) == 10
    assert len(_epoch(sampler, 2)) == 4


def test_the_order_depends_only_on_seed_and_epoch_so_resumed_runs_and_paired_cells_agree() -> None:
    a, b = EpochSliceSampler(100, 16, seed=3), EpochSliceSampler(100, 16, seed=3)
    assert _epoch(a, 7) == _epoch(b, 7)
    assert _epoch(a, 7) != _epoch(EpochSliceSampler(100, 16, seed=4), 7)


def test_replicas_split_an_epoch_without_overlap_and_drop_the_remainder() -> None:
    shards = [_epoch(EpochSliceSampler(50, 11, num_replicas=2, rank=r, seed=1), 2) for r in range(2)]
    assert [len(s) for s in shards] == [5, 5]
    assert not set(shards[0]) & set(shards[1])
    assert len(EpochSliceSampler(50, 11, num_replicas=2, rank=0)) == 5


def test_an_empty_split_or_fewer_images_than_replicas_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one image per replica"):
        EpochSliceSampler(0, 4)
    with pytest.raises(ValueError, match="at least one image per replica"):
        EpochSliceSampler(10, 1, num_replicas=2)


def test_the_training_loop_sampler_is_a_pass_per_epoch_unless_epoch_images_is_set() -> None:
    # what pipeline/train_loop.py gives each Ray worker, from train.epoch_images
    whole = [epoch_sampler(30, None, num_replicas=2, rank=r, seed=1) for r in range(2)]
    assert [len(s) for s in whole] == [15, 15]
    for s in whole:
        s.set_epoch(3)
    assert sorted(list(whole[0]) + list(whole[1])) == list(range(30))
    short = epoch_sampler(30, 10, num_replicas=2, rank=0, seed=1)
    short.set_epoch(3)
    assert len(short) == 5 and len(list(short)) == 5
