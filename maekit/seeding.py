"""Random draws inside training steps as a pure function of (run seed, batch, rank).

Seeding torch's generator before every training batch makes the masks, drop path and dropout of
batch k the same whether the run went straight through or was killed and resumed before k, and
different on every rank (which DDP needs: ranks must not mask alike). Costs microseconds.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def seed_training_batch(trainer: Any) -> None:
    """Seed torch's RNG for the batch the trainer is about to train on."""
    base = int(os.environ.get("PL_GLOBAL_SEED", 0))
    batch = trainer.fit_loop.epoch_loop.batch_progress.total.ready  # restored on resume
    torch.manual_seed(((base * 1_000_003 + batch) * 65_537 + trainer.global_rank) % 2**63)
