"""Bucketing batch plans: one bucket (sensor) per batch, seeded, DDP-sharded, resumable."""

from __future__ import annotations

import random

import pytest
import torch

from maekit.data import buckets as buckets_module
from maekit.data.buckets import BucketBatchSampler, BucketedResumableLoader, bucket_batches
from maekit.errors import ConfigError


def _random_buckets(rng: random.Random) -> list[list[int]]:
    sizes = [rng.randint(1, 30) for _ in range(rng.randint(2, 5))]
    indices = list(range(sum(sizes)))
    rng.shuffle(indices)  # bucket members need not be contiguous
    out, start = [], 0
    for n in sizes:
        out.append(sorted(indices[start:start + n]))
        start += n
    return out


@pytest.mark.parametrize("trial", range(4))
def test_bucket_batches_are_homogeneous_complete_and_seeded(trial: int) -> None:
    rng = random.Random(trial)
    buckets = _random_buckets(rng)
    owner = {i: b for b, members in enumerate(buckets) for i in members}
    batch, seed = rng.randint(1, 7), rng.randint(0, 10_000)
    plan = bucket_batches(buckets, batch, seed=seed, epoch=0)
    assert all(len({owner[i] for i in b}) == 1 for b in plan)  # never two sensors in a batch
    assert sorted(i for b in plan for i in b) == sorted(owner)  # every sample once
    assert all(len(b) <= batch for b in plan)
    assert plan == bucket_batches(buckets, batch, seed=seed, epoch=0)  # a function of the seed
    assert plan != bucket_batches(buckets, batch, seed=seed, epoch=1)  # reshuffled per epoch
    # interleaved: the bucket sequence is not simply bucket after bucket
    sequences = [[owner[b[0]] for b in bucket_batches(buckets, batch, seed=seed + s)] for s in range(5)]
    assert any(s != sorted(s) for s in sequences)
    # in order without shuffling: buckets one after the other, members in their order
    assert bucket_batches(buckets, batch, shuffle=False) == [m[i:i + batch] for m in buckets
                                                             for i in range(0, len(m), batch)]
    # drop_last drops each bucket's partial batch only when the bucket keeps a full one
    dropped = bucket_batches(buckets, batch, seed=seed, drop_last=True)
    for b, members in enumerate(buckets):
        mine = [x for x in dropped if owner[x[0]] == b]
        assert sum(map(len, mine)) == (len(members) if len(members) <= batch else len(members) // batch * batch)


@pytest.mark.parametrize("trial", range(3))
def test_bucket_batches_ddp_shards(trial: int) -> None:
    rng = random.Random(100 + trial)
    buckets = _random_buckets(rng)
    owner = {i: b for b, members in enumerate(buckets) for i in members}
    world, batch, seed = rng.randint(2, 4), rng.randint(1, 5), rng.randint(0, 99)
    plans = [bucket_batches(buckets, batch, seed=seed, epoch=2, rank=r, world=world) for r in range(world)]
    assert len({len(p) for p in plans}) == 1  # every rank steps equally often
    for step in zip(*plans):  # and at each step all ranks hold the same sensor (static shapes)
        assert len({owner[b[0]] for b in step}) == 1
    for b, members in enumerate(buckets):
        shares = [[i for x in p for i in x if owner[i] == b] for p in plans]
        assert len({len(s) for s in shares}) == 1  # equal shares of each bucket
        assert set().union(*map(set, shares)) == set(members)  # together: the whole bucket
        if len(members) % world == 0:  # no padding needed: disjoint
            assert sum(map(len, shares)) == len(members)
    with pytest.raises(ConfigError, match="rank 3 is outside"):
        bucket_batches(buckets, batch, rank=3, world=3)


def test_bucket_batch_sampler_in_a_dataloader() -> None:
    buckets = [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9, 10, 11]]
    sampler = BucketBatchSampler(buckets, batch_size=3, seed=4)
    data = torch.arange(12) * 10
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    first = [b.tolist() for b in loader]
    assert len(first) == len(sampler) == 2 + 3
    assert all(len({(x // 10) % 2 if x // 10 < 10 else 1 for x in b}) == 1 for b in first)
    sampler.set_epoch(1)
    assert [b.tolist() for b in loader] != first


def test_bucketed_resumable_loader_resumes_and_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    buckets = _random_buckets(rng)
    owner = {i: b for b, members in enumerate(buckets) for i in members}
    data = list(range(len(owner)))
    loader = BucketedResumableLoader(data, buckets, batch_size=4, seed=5)
    loader.sampler.set_epoch(1)
    full = [b.tolist() for b in loader]
    assert all(len({owner[i] for i in b}) == 1 for b in full)
    assert full == bucket_batches(buckets, 4, seed=5, epoch=1)
    # a killed run resumes after 3 fetched batches (2 trained + 1 prefetched) with batch 3
    resumed = BucketedResumableLoader(data, buckets, batch_size=4, seed=5)
    resumed.load_state_dict({"epoch": 1, "seed": 5, "served": 3})
    assert [b.tolist() for b in resumed] == full[2:]
    # DDP: the loader takes its rank's plan
    monkeypatch.setattr(buckets_module, "_rank_and_world", lambda: (1, 2))
    ranked = BucketedResumableLoader(data, buckets, batch_size=4, seed=5)
    assert [b.tolist() for b in ranked] == bucket_batches(buckets, 4, seed=5, epoch=0, rank=1, world=2)
    with pytest.raises(ConfigError, match="every sample must be in exactly one bucket"):
        BucketedResumableLoader(data + [99], buckets, batch_size=4)
