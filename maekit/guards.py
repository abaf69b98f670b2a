"""Stop a run whose training loss stops being finite, before it writes a checkpoint of the
diverged weights.

Noting a loss costs no host sync (the flag stays on the loss's device); the flag is read every
`trainer.log_every_n_steps` steps, when Lightning syncs for logging anyway, and before every
checkpoint, so the newest checkpoint on disk is always from before the first bad step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from maekit.errors import MaekitError


class TrainingDiverged(MaekitError):
    """The training loss became NaN or infinite."""


class FiniteLossWatch:
    """Remembers the first training step whose loss was not finite."""

    def __init__(self) -> None:
        self._first_bad: Tensor | None = None  # -1 while every loss so far was finite

    def note(self, loss: Tensor, step: int) -> None:
        """Record this step's loss; no host sync."""
        bad = ~torch.isfinite(loss.detach()).all()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)

    def check(self) -> None:
        """Raise `TrainingDiverged` if any noted loss was not finite (reads the flag: one sync)."""
        if self._first_bad is None:
            return
        step = int(self._first_bad)
        if step >= 0:
            raise TrainingDiverged(
                f"the training loss became NaN or infinite at step {step}; training stopped without "
                f"checkpointing the diverged weights (checkpoints on disk are from before step {step}). "
                "Usual causes: a learning rate too high for the batch size (lower --model.lr or "
                "--model.base_lr), float16 overflow (use --trainer.precision bf16-mixed), no gradient "
                "clipping (--trainer.gradient_clip_val 1.0). Resume from the last checkpoint with "
                "--ckpt_path PATH after changing one of them.")


class LossGuard:
    """LightningModule mixin: call `self.watch_loss(loss)` in `training_step` and
    `self.check_loss_before_saving()` at the top of `on_save_checkpoint`."""

    loss_watch: FiniteLossWatch

    def watch_loss(self, loss: Tensor) -> None:
        if not hasattr(self, "loss_watch"):
            self.loss_watch = FiniteLossWatch()
        self.loss_watch.note(loss, self.global_step)  # type: ignore[attr-defined]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 50)))  # type: ignore[attr-defined]
        if hasattr(self, "loss_watch") and self.global_step % every == 0:  # type: ignore[attr-defined]
            self.loss_watch.check()

    def check_loss_before_saving(self) -> None:
        if hasattr(self, "loss_watch"):
            self.loss_watch.check()
