"""The datamodule base class every domain's datamodule builds on.

It holds what the domains' datamodules repeated: seeded train/validation splits, a seeded
labels-per-class subset of the training split, and the loader factory (a resumable training
loader, plain evaluation loaders, `num_workers` capped at the CPUs this process may use).
A subclass sets `root`, `batch_size`, `num_workers`, `seed` in `__init__` and fills
`self.datasets` ("train", "val", maybe "test") in `setup`.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import lightning as L
from torch.utils.data import DataLoader, Dataset

from maekit.data.resumable import ResumableLoader, training_loader
from maekit.errors import DataError

T = TypeVar("T")
_NOTED: set[tuple[int, int]] = set()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def worker_count(requested: int) -> int:
    """`requested` loader workers, lowered to the CPUs available (with a one-line note the first
    time): asking 8 workers of a 2-core machine only adds processes that wait on each other."""
    cpus = available_cpus()
    if requested <= cpus:
        return requested
    if (requested, cpus) not in _NOTED:
        _NOTED.add((requested, cpus))
        print(f"maekit: num_workers {requested} lowered to {cpus}, the CPUs this process may use", file=sys.stderr)
    return cpus


class MaekitDataModule(L.LightningDataModule):
    """Seeded splits, labels-per-class subsets and loaders for a domain's datamodule."""

    root: Any
    batch_size: int
    num_workers: int = 0
    seed: int = 0
    #: drop the last, smaller training batch when the split holds more than one batch
    drop_last_train: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ splits
    def seeded_split(self, items: Sequence[T], fraction: float, at_least_one: bool = False) -> tuple[list[T], list[T]]:
        """(validation, training): a `fraction` share of `items` drawn with `seed`. With
        `at_least_one`, a fraction strictly between 0 and 1 leaves one item on each side."""
        order = list(range(len(items)))
        random.Random(self.seed).shuffle(order)
        n_val = int(round(fraction * len(items)))
        if at_least_one and 0 < fraction < 1 and len(items) > 1:
            n_val = min(max(n_val, 1), len(items) - 1)
        return [items[i] for i in order[:n_val]], [items[i] for i in order[n_val:]]

    def per_class_subset(self, labels: Sequence[int], per_class: int) -> list[int]:
        """Sorted indexes of at most `per_class` items of every class, drawn with `seed`."""
        rng = random.Random(self.seed)
        keep: list[int] = []
        for c in sorted(set(labels)):
            members = [i for i, y in enumerate(labels) if y == c]
            rng.shuffle(members)
            keep += members[:per_class]
        return sorted(keep)

    # ------------------------------------------------------------------ loaders
    @property
    def collate_fn(self) -> Callable[[list[Any]], Any] | None:
        """How samples are batched (None: PyTorch's default); recorded in shard manifests."""
        return None

    @property
    def eval_batch_size(self) -> int:
        """Batch size of the evaluation loaders (1 where whole, differently sized samples are validated)."""
        return self.batch_size

    def split_dataset(self, name: str) -> Dataset:
        if name not in self.datasets:
            raise DataError(getattr(self, "root", type(self).__name__),
                            f"has no {name!r} split (it has {sorted(self.datasets) or 'none: call setup() first'})")
        return self.datasets[name]

    def loader(self, name: str) -> DataLoader:
        """An evaluation loader over split `name`, in order."""
        workers = worker_count(self.num_workers)
        return DataLoader(self.split_dataset(name), batch_size=self.eval_batch_size, num_workers=workers,
                          collate_fn=self.collate_fn, persistent_workers=workers > 0)

    def train_dataloader(self) -> ResumableLoader:
        train = self.split_dataset("train")
        drop_last = self.drop_last_train and len(train) > self.batch_size  # type: ignore[arg-type]
        return training_loader(self, train, self.batch_size, worker_count(self.num_workers), drop_last=drop_last,
                               collate_fn=self.collate_fn)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test" if "test" in self.datasets else "val")

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
