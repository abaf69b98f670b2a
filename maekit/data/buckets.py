"""Batches that never mix buckets (sensors): shuffled within each bucket, bucket batches interleaved.

Mixed-sensor pretraining needs every batch to come from one sensor, so a batch has one band set
and one chip size and tensor shapes stay static (as Clay batches per platform). The plan of an
epoch is a pure function of (seed, epoch, rank, world):

1. each bucket's indices are shuffled with a generator seeded by (seed, epoch, bucket);
2. under DDP each bucket's order is cycled to a multiple of the world size and every rank takes
   an equal, disjoint slice (so all ranks get the same number of batches of every bucket);
3. each rank cuts its slice of a bucket into batches (dropping a bucket's last partial batch with
   `drop_last`, when the bucket keeps a full one);
4. the batches of all buckets are interleaved by one permutation seeded by (seed, epoch), the same
   on every rank, so at each step every rank holds a batch of the same bucket.

`BucketBatchSampler` is a PyTorch batch sampler (evaluation loaders; `shuffle=False` keeps each
bucket in order, buckets one after the other). `BucketedResumableLoader` is the resumable training
loader of `maekit.data.resumable` with this plan, so a killed run resumes mid-epoch with the same
batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from maekit.data.resumable import ResumableLoader, _rank_and_world
from maekit.errors import ConfigError


def bucket_batches(buckets: Sequence[Sequence[int]], batch_size: int, seed: int = 0, epoch: int = 0,
                   shuffle: bool = True, drop_last: bool = False, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's batches of an epoch: each batch holds indices of one bucket only (see the module doc)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside the world of {world}")
    batches: list[list[int]] = []
    for b, members in enumerate(buckets):
        order = list(members)
        if not order:
            continue
        if shuffle:
            generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_009 + b)
            order = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
        per_rank = math.ceil(len(order) / world)
        order = (order * math.ceil(per_rank * world / len(order)))[: per_rank * world]  # equal shares
        mine = order[rank::world]
        cut = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
        if drop_last and len(cut) > 1 and len(cut[-1]) < batch_size:
            cut.pop()
        batches += cut
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


class BucketBatchSampler:
    """A batch sampler over `buckets` (lists of dataset indices): one bucket per batch.

    Args:
        buckets: dataset indices of each bucket (e.g. each sensor's chips).
        batch_size: samples per batch.
        seed: the shuffle's seed; `set_epoch` (called by Lightning) changes the order per epoch.
        shuffle: shuffle within buckets and interleave their batches; False: in order.
        drop_last: drop each bucket's last partial batch (when it keeps a full one).
        rank, world: this process's DDP rank and the world size (default: from torch.distributed).
    """

    def __init__(self, buckets: Sequence[Sequence[int]], batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, rank: int | None = None, world: int | None = None) -> None:
        self.buckets = [list(b) for b in buckets]
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _plan(self) -> list[list[int]]:
        rank, world = _rank_and_world()
        return bucket_batches(self.buckets, self.batch_size, self.seed, self.epoch, self.shuffle, self.drop_last,
                              rank if self.rank is None else self.rank, world if self.world is None else self.world)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._plan())

    def __len__(self) -> int:
        return len(self._plan())


class BucketedResumableLoader(ResumableLoader):
    """`ResumableLoader` whose batches each come from one bucket (see `bucket_batches`).

    Args:
        dataset: the training samples.
        buckets: dataset indices of each bucket.
        batch_size, num_workers, drop_last, collate_fn, pin_memory, seed, trainer: as `ResumableLoader`.
    """

    def __init__(self, dataset: Dataset, buckets: Sequence[Sequence[int]], batch_size: int, num_workers: int = 0,
                 drop_last: bool = False, collate_fn: Callable[[list[Any]], Any] | None = None,
                 pin_memory: bool = False, seed: int = 0, trainer: Any = None) -> None:
        self.buckets = [list(b) for b in buckets]
        covered = sorted(i for b in self.buckets for i in b)
        size = len(dataset)  # type: ignore[arg-type]
        if covered != list(range(size)):
            raise ConfigError(f"the buckets cover {len(covered)} indices but the dataset has {size} samples: "
                              "every sample must be in exactly one bucket")
        super().__init__(dataset, batch_size, num_workers, drop_last, collate_fn, pin_memory, seed, True, trainer)

    def _batches(self) -> list[list[int]]:
        rank, world = _rank_and_world()
        return bucket_batches(self.buckets, self.batch_size, self.sampler.seed, self.sampler.epoch, True,
                              self.drop_last, rank, world)
