"""A training loader that a killed run can resume mid-epoch with the same data order.

Lightning stores a loader's `state_dict()` in its checkpoints and hands it back to
`load_state_dict()` on resume when the loader has both (it treats it as resumable). This loader's
order is a pure function of (seed, epoch, rank), and on resume it skips the batches the trainer
had already completed (read from the trainer's restored progress, not from what was prefetched),
without loading them. Under DDP every rank takes its own slice of the epoch's order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class EpochShuffle:
    """A permutation of `size` indices fixed by (seed, epoch); Lightning calls `set_epoch`."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableLoader:
    """Shuffled training batches of a map-style dataset, resumable mid-epoch.

    Args:
        dataset: the training samples.
        batch_size, num_workers, collate_fn, pin_memory, drop_last: as for `DataLoader`.
        seed: the order's seed (default: the run's seed, `torch.initial_seed()` when created).
        trainer: the Lightning trainer, whose restored progress says how many batches to skip.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int = 0, drop_last: bool = False,
                 collate_fn: Callable[[list[Any]], Any] | None = None, pin_memory: bool = False,
                 seed: int | None = None, shuffle: bool = True, trainer: Any = None) -> None:
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.drop_last, self.collate_fn, self.pin_memory = drop_last, collate_fn, pin_memory
        self.sampler = EpochShuffle(len(dataset), torch.initial_seed() % 2**31 if seed is None else seed, shuffle)
        self.trainer = trainer
        self._skip = 0
        self._served = 0

    def _batches(self) -> list[list[int]]:
        rank, world = _rank_and_world()
        order = self.sampler.order()
        per_rank = math.ceil(len(order) / world)
        order = (order * math.ceil(per_rank * world / max(len(order), 1)))[: per_rank * world]  # equal shares
        mine = order[rank::world]
        batches = [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        batches = self._batches()[skip:]
        self._served = skip
        if not batches:
            return
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            collate_fn=self.collate_fn, pin_memory=self.pin_memory)
        for batch in loader:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the epoch stands (batches fetched so far, which may run ahead of those trained on)."""
        return {"epoch": self.sampler.epoch, "seed": self.sampler.seed, "served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the same epoch's order, minus the batches the trainer had completed."""
        self.sampler.epoch = int(state.get("epoch", 0))
        self.sampler.seed = int(state.get("seed", self.sampler.seed))
        if self.trainer is not None:  # batches trained on this epoch (a checkpoint written in
            # on_train_batch_end counts its batch as processed, not yet completed)
            self._skip = int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        else:  # without the trainer: what was fetched, less Lightning's one prefetched batch
            self._skip = max(int(state.get("served", 0)) - 1, 0)


def training_loader(datamodule: Any, dataset: Dataset, batch_size: int, num_workers: int = 0,
                    drop_last: bool = False, collate_fn: Callable[[list[Any]], Any] | None = None) -> ResumableLoader:
    """The resumable training loader of a datamodule (its trainer and seed attached).

    A module that reads the training split as data rather than training on it (frozen-feature
    evaluation) sets `datamodule.full_pass = True` in its `setup`: then no sample is dropped."""
    if getattr(datamodule, "full_pass", False):
        drop_last = False
    trainer = getattr(datamodule, "trainer", None)
    seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed() % 2**31))  # the run's seed_everything
    return ResumableLoader(dataset, batch_size, num_workers, drop_last, collate_fn,
                           pin_memory=torch.cuda.is_available(), seed=seed, trainer=trainer)
