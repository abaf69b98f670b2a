"""Checkpoints that a kill cannot corrupt: written to a temporary file beside the target and
renamed into place, so `last.ckpt` is always either the previous or the new complete file."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from maekit.files import atomic_output


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with an atomic rename (local paths; others as Lightning)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # object storage: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)
