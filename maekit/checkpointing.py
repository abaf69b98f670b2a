"""Checkpoints that a kill cannot corrupt (written to a temporary file beside the target and
renamed into place, so `last.ckpt` is always either the previous or the new complete file), and
the callback that keeps exactly one `last.ckpt` per run."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from maekit.files import atomic_output


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with an atomic rename (local paths; others as Lightning)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # object storage: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)


class LastCheckpoint(ModelCheckpoint):
    """Keeps one `last.ckpt` per run, always the newest state: written every
    `every_n_train_steps` optimiser steps, after every validation (or training epoch when there
    is none) and when training ends. `--ckpt_path last` resumes from it. (A second callback with
    `save_last` would write a `last-v1.ckpt` beside it; configs use this one instead, next to a
    plain `ModelCheckpoint` that keeps the best.)

    Args:
        every_n_train_steps: also write it every this many steps (0: only at validation and the end).
        dirpath: folder; default the run's `checkpoints/` folder under its log directory.
    """

    def __init__(self, every_n_train_steps: int = 500, dirpath: str | None = None) -> None:
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, monitor=None,
                         every_n_train_steps=every_n_train_steps or None, enable_version_counter=False)

    def _write_last(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # also skips a step already written
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_save_on_train_epoch_end(trainer):
            self._write_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._should_save_on_train_epoch_end(trainer):
            self._write_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_last(trainer)
