"""A training loader that a killed run can resume mid-epoch with the same data, augmentations included.

Lightning stores a loader's `state_dict()` in its checkpoints and hands it back to
`load_state_dict()` on resume when the loader has both (it treats it as resumable). This loader's
order is a pure function of (seed, epoch, rank); every sample's random augmentation is drawn from
generators seeded by (seed, epoch, sample index), whichever worker loads it; and on resume it
skips the batches the trainer had already trained on in the saved epoch (read from the trainer's
restored progress, not from what was prefetched), without loading them. Under DDP every rank
takes an equal slice of the epoch's order. Workers persist across epochs.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
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


class SeededSamples(Dataset):
    """`dataset[index]` with torch, numpy and `random` seeded from (seed, epoch, index) first, so a
    sample's augmentation does not depend on which worker loads it or on what came before.
    Datasets with their own generators (MONAI transforms) get `reseed(seed)` called if they have it.
    Indices are (epoch, index) pairs, as `ResumableLoader`'s batches give them."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed = ((self.seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**32
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        reseed = getattr(self.dataset, "reseed", None)
        if reseed is not None:
            reseed(seed)
        return self.dataset[index]


class _EpochBatches:
    """The batch sampler of `ResumableLoader`: reads the loader's epoch and pending skip each time
    an epoch starts, so one (persistent-worker) DataLoader serves every epoch."""

    def __init__(self, loader: ResumableLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader._batches())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        loader = self.loader
        epoch = loader.sampler.epoch
        skip = loader._skip if loader._skip_epoch == epoch else 0
        loader._skip, loader._skip_epoch = 0, None
        batches = loader._batches()
        skip = min(skip, len(batches))
        loader._served = skip
        for batch in batches[skip:]:
            yield [(epoch, i) for i in batch]


class ResumableLoader:
    """Shuffled training batches of a map-style dataset, resumable mid-epoch.

    Args:
        dataset: the training samples.
        batch_size, num_workers, collate_fn, pin_memory: as for `DataLoader`.
        drop_last: drop a rank's last partial batch (only when the rank keeps a full one).
        seed: the order's and the augmentations' seed (the run's seed).
        trainer: the Lightning trainer, whose restored progress says how many batches to skip.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int = 0, drop_last: bool = False,
                 collate_fn: Callable[[list[Any]], Any] | None = None, pin_memory: bool = False,
                 seed: int = 0, shuffle: bool = True, trainer: Any = None) -> None:
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.drop_last = drop_last
        self.sampler = EpochShuffle(len(dataset), seed, shuffle)  # type: ignore[arg-type]
        self.trainer = trainer
        self._skip, self._skip_epoch, self._served = 0, None, 0
        self._loader = DataLoader(SeededSamples(dataset, seed), batch_sampler=_EpochBatches(self),
                                  num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin_memory,
                                  persistent_workers=num_workers > 0)

    def _batches(self) -> list[list[int]]:
        rank, world = _rank_and_world()
        order = self.sampler.order()
        per_rank = math.ceil(len(order) / world)
        order = (order * math.ceil(per_rank * world / max(len(order), 1)))[: per_rank * world]  # equal shares
        mine = order[rank::world]
        batches = [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[Any]:
        for batch in self._loader:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the epoch stands (batches fetched so far, which may run ahead of those trained on)."""
        return {"epoch": self.sampler.epoch, "seed": self.sampler.seed, "served": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the saved epoch's order, minus the batches the trainer had trained on. (When the
        checkpoint closed its epoch, the next epoch starts whole: the skip applies to its own epoch.)"""
        self.sampler.epoch = int(state.get("epoch", 0))
        self.sampler.seed = int(state.get("seed", self.sampler.seed))
        if self.trainer is not None:  # batches trained on this epoch (a checkpoint written in
            # on_train_batch_end counts its batch as processed, not yet completed)
            self._skip = int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        else:  # without the trainer: what was fetched, less Lightning's one prefetched batch
            self._skip = max(int(state.get("served", 0)) - 1, 0)
        self._skip_epoch = self.sampler.epoch


def training_loader(datamodule: Any, dataset: Dataset, batch_size: int, num_workers: int = 0,
                    drop_last: bool = False, collate_fn: Callable[[list[Any]], Any] | None = None) -> ResumableLoader:
    """The resumable training loader of a datamodule (its trainer and the run's seed attached).

    A module that reads the training split as data rather than training on it (frozen-feature
    evaluation) sets `datamodule.full_pass = True` in its `setup`: then no sample is dropped."""
    if getattr(datamodule, "full_pass", False):
        drop_last = False
    trainer = getattr(datamodule, "trainer", None)
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # the run's seed_everything; the same on every rank
    return ResumableLoader(dataset, batch_size, num_workers, drop_last, collate_fn,
                           pin_memory=torch.cuda.is_available(), seed=seed, trainer=trainer)
