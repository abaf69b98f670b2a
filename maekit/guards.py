"""Stop a run whose training loss stops being finite, before it writes a checkpoint of the
diverged weights.

Noting a loss costs no host sync (the flag stays on the loss's device); the flag is read every
`trainer.log_every_n_steps` steps, when Lightning syncs for logging anyway, at the end of
training, and before every checkpoint, together with a check that the weights are finite (a NaN
gradient can poison them while the loss is still finite). Ranks agree on the verdict through one
all-reduce, so they stop together instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from maekit.errors import MaekitError


class TrainingDiverged(MaekitError):
    """The training loss, or the weights, became NaN or infinite."""


_FIXES = ("Usual causes: a learning rate too high for the batch size (lower --model.lr or --model.base_lr), "
          "float16 overflow (use --trainer.precision bf16-mixed), no gradient clipping "
          "(--trainer.gradient_clip_val 1.0). Resume from the last checkpoint with --ckpt_path PATH after "
          "changing one of them.")
_NONE = 2**62  # "no bad step" in the cross-rank minimum


class FiniteLossWatch:
    """Remembers the first training step whose loss was not finite, on the loss's device."""

    def __init__(self) -> None:
        self._first_bad: Tensor | None = None  # -1 while every loss so far was finite

    def note(self, loss: Tensor, step: int) -> None:
        """Record this step's loss; no host sync."""
        bad = ~torch.isfinite(loss.detach()).all()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)

    def check(self, step: int, device: torch.device, parameters: Iterable[Tensor] = ()) -> None:
        """Raise `TrainingDiverged` if a noted loss, or one of `parameters` (this rank's weights or
        weight shards), was not finite on any rank. Every rank must call it at the same point:
        the verdict is agreed through one all-reduce on `device` (the module's: NCCL needs a GPU
        tensor), so no rank raises while another waits."""
        tensors = [t.detach() for t in parameters if t.numel()]
        first = self._first_bad.to(device) if self._first_bad is not None else torch.full((), -1, device=device)
        weights_bad = (torch.stack([~torch.isfinite(t).all() for t in tensors]).any().to(device)
                       if tensors else torch.zeros((), dtype=torch.bool, device=device))
        verdict = torch.stack([torch.where(first >= 0, first, _NONE), -weights_bad.long()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(verdict, op=torch.distributed.ReduceOp.MIN)
        first_bad, weights_are_bad = int(verdict[0]), bool(verdict[1] < 0)  # the one host sync
        if first_bad != _NONE:
            raise TrainingDiverged(
                f"the training loss became NaN or infinite at step {first_bad}; training stopped without "
                f"checkpointing the diverged weights (checkpoints on disk are from before step {first_bad}). "
                + _FIXES)
        if weights_are_bad:
            raise TrainingDiverged(
                f"the weights became NaN or infinite by step {step} although the loss stayed finite (a gradient "
                "or an optimiser update overflowed); training stopped without checkpointing them. " + _FIXES)


class LossGuard:
    """LightningModule mixin that stops a diverging run: call `self.watch_loss(loss)` in
    `training_step` and `self.check_loss_before_saving()` at the top of `on_save_checkpoint`."""

    loss_watch: FiniteLossWatch

    def watch_loss(self, loss: Tensor) -> None:
        """Note this step's training loss (no host sync)."""
        if not hasattr(self, "loss_watch"):
            self.loss_watch = FiniteLossWatch()
        self.loss_watch.note(loss, self.global_step)  # type: ignore[attr-defined]

    def on_train_start(self) -> None:
        """A new fit starts with a clean record (a notebook may refit after a divergence)."""
        self.loss_watch = FiniteLossWatch()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Check the losses every `log_every_n_steps` steps, when logging syncs anyway."""
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 50)))  # type: ignore[attr-defined]
        if self.global_step % every == 0:  # type: ignore[attr-defined]
            self._check()

    def on_train_end(self) -> None:
        """A run that diverged in its last steps does not end as a success."""
        self._check(weights=True)

    def check_loss_before_saving(self) -> None:
        """Refuse to checkpoint after a non-finite loss or with non-finite weights."""
        self._check(weights=True)

    def _check(self, weights: bool = False) -> None:
        watch = getattr(self, "loss_watch", None) or FiniteLossWatch()
        parameters = self.parameters() if weights else ()  # type: ignore[attr-defined]
        watch.check(self.global_step, self.device, parameters)  # type: ignore[attr-defined]
