"""Epochs shorter than a pass over the training split.

An epoch is the unit of validation, checkpoints and the convergence rule of the ablation report.
With a large training split and a short budget, whole passes give too few points on the learning
curve; `EpochSliceSampler` makes epoch e the e-th slice of `images` indices taken from an endless
sequence of seeded permutations of the split, so every image is still seen once per pass, in a
different order each pass, and epochs, not passes, are what the run counts.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler, Sampler


class EpochSliceSampler(Sampler[int]):
    """Epoch `e` (as set by `set_epoch`): indices [e·images, (e+1)·images) of the concatenated
    permutations perm(seed, 0), perm(seed, 1), ... of range(size), split round-robin across replicas.

    Deterministic in (seed, epoch): a resumed run and every cell sharing a seed see the same order.
    Each replica yields images // num_replicas indices (the remainder is dropped, as
    `DistributedSampler(drop_last=True)` does).
    """

    def __init__(self, size: int, images: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        if size < 1 or images < num_replicas:
            raise ValueError(f"need a non-empty split and at least one image per replica, got {size=}, {images=}")
        self.size, self.seed, self.rank, self.num_replicas = size, seed, rank, num_replicas
        self.per_replica = images // num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pass(self, index: int) -> torch.Tensor:  # (size,) the index-th permutation
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + index))

    def __iter__(self) -> Iterator[int]:
        total = self.per_replica * self.num_replicas
        position, chosen = self.epoch * total, []
        while len(chosen) < total:
            index, offset = divmod(position, self.size)
            take = min(total - len(chosen), self.size - offset)
            chosen.extend(self._pass(index)[offset : offset + take].tolist())
            position += take
        return iter(chosen[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.per_replica


def epoch_sampler(
    size: int, epoch_images: int | None, num_replicas: int = 1, rank: int = 0, seed: int = 0
) -> Sampler[int]:
    """The training sampler of one worker (call `set_epoch` before each epoch): one shuffled pass over
    the split per epoch when `epoch_images` is None, else `EpochSliceSampler` epochs of that many."""
    if epoch_images is None:
        return DistributedSampler(
            range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
    return EpochSliceSampler(size, epoch_images, num_replicas=num_replicas, rank=rank, seed=seed)
