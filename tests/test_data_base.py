"""The datamodule base class: seeded splits, labels-per-class subsets, the worker cap."""

from __future__ import annotations

import os
import random

import pytest

from maekit.data.base import MaekitDataModule, available_cpus, worker_count


def module(seed: int) -> MaekitDataModule:
    dm = MaekitDataModule()
    dm.seed, dm.batch_size = seed, 2
    return dm


def test_seeded_split_is_a_repeatable_partition() -> None:
    seed, n = random.randrange(10**6), random.randrange(5, 50)
    fraction = random.uniform(0.05, 0.6)
    items = [f"item{i}" for i in range(n)]
    val, train = module(seed).seeded_split(items, fraction, at_least_one=True)
    assert sorted(val + train) == sorted(items) and not set(val) & set(train)
    assert len(val) == min(max(round(fraction * n), 1), n - 1)
    assert (val, train) == module(seed).seeded_split(items, fraction, at_least_one=True)
    others = {tuple(module(seed + k).seeded_split(items, 0.5)[0]) for k in range(1, 6)}
    assert len(others) > 1  # the seed decides


def test_per_class_subset_keeps_at_most_k_of_every_class() -> None:
    seed, k = random.randrange(10**6), random.randrange(1, 4)
    labels = [random.randrange(4) for _ in range(60)]
    keep = module(seed).per_class_subset(labels, k)
    assert keep == sorted(keep)
    for c in set(labels):
        assert sum(labels[i] == c for i in keep) == min(k, labels.count(c))
    assert keep == module(seed).per_class_subset(labels, k)


def test_workers_are_capped_at_the_cpus_this_process_may_use(capsys: pytest.CaptureFixture[str]) -> None:
    cpus = len(os.sched_getaffinity(0))
    assert available_cpus() == cpus
    assert worker_count(cpus) == cpus and capsys.readouterr().err == ""
    extra = random.randrange(1, 64)
    assert worker_count(cpus + extra) == cpus
    note = capsys.readouterr().err
    assert f"num_workers {cpus + extra} lowered to {cpus}" in note and note.count("\n") == 1
    worker_count(cpus + extra)  # said once
    assert capsys.readouterr().err == ""


def test_a_missing_split_is_named() -> None:
    from maekit.errors import DataError

    dm = module(0)
    dm.root = "somewhere"
    with pytest.raises(DataError, match="somewhere: has no 'val' split"):
        dm.val_dataloader()
