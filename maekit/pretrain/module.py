"""The Lightning module that pretrains a `MaskedAutoencoder`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric

from maekit.backbones import SizeName
from maekit.guards import LossGuard
from maekit.optim import build_adamw, effective_batch_size, lightning_schedule, param_groups, parameter_ranks
from maekit.pretrain.figures import reconstruction_images, write_figure
from maekit.pretrain.mae import MaskedAutoencoder
from maekit.pretrain.masking import MaskGenerator
from maekit.seeding import seed_training_batch
from maekit.tokens import ConnectsDatamodule, DomainAdapter, GridAdapter


class MAEPretrainModule(LossGuard, L.LightningModule):
    """Masked-autoencoder pretraining for any domain adapter.

    Args:
        adapter: the domain adapter (bands, patch size, statistics...).
        size: encoder size by name.
        decoder_width, decoder_depth, decoder_heads: the light decoder; each one left unset
            follows `size` (`maekit.backbones.DECODER_SIZES`: `nano` 64 x 1, `base` MAE's 512 x 8).
        masking: mask generator (default random 0.75).
        base_lr: lr per 256 samples; the lr used is base_lr * effective batch / 256 unless `lr`,
            where the effective batch is the per-device batch (the datamodule's `batch_size`,
            else the training loader's) x accumulate_grad_batches x devices x nodes; a run
            where neither says its batch size must set `lr` (ConfigError otherwise). The lr is
            printed when fitting starts, with a warning when a small batch makes it tiny.
        lr: absolute learning rate, overriding `base_lr`.
        weight_decay: AdamW decay (none on biases, norms, tokens, position tables).
        betas: AdamW betas.
        warmup_epochs: linear warm-up, then cosine decay per step.
        figure_every_n_epochs: save a reconstruction PNG under the run directory every N epochs
            (0 turns figures off).
        compile: run the encoder and decoder through `torch.compile`.
        compile_backend: the `torch.compile` backend when `compile` is set: "inductor" (torch's
            default, generated kernels) or another registered one ("aot_eager" traces forward
            and backward without generating kernels: quick to start, for debugging graph breaks).
        decoder_reads: encoder blocks every decoder layer also attends to (Hi-End-MAE's
            hierarchical decoding, e.g. [3, 6, 9, 12]); None is the plain MAE decoder.
        checkpoint_blocks: activation checkpointing of the encoder and decoder blocks: training
            keeps each block's input only and recomputes the rest in backward (less memory,
            about one more forward pass of the blocks per step).
    """

    def __init__(
        self,
        adapter: DomainAdapter,
        size: SizeName = "tiny",
        decoder_width: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
        masking: MaskGenerator | None = None,
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 1.0,
        figure_every_n_epochs: int = 1,
        compile: bool = False,
        compile_backend: str = "inductor",
        decoder_reads: list[int] | None = None,
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["adapter", "masking"])
        self.mae = MaskedAutoencoder(adapter, size, decoder_width, decoder_depth, decoder_heads, masking,
                                     decoder_reads=decoder_reads, checkpoint_blocks=checkpoint_blocks)
        if compile:
            self.mae.compile_stacks(compile_backend)
        self._figure_batch: dict[str, Any] | None = None
        self.last_figure: Path | None = None
        self._parameter_ranks: dict[str, int] | None = None
        self.train_loss = MeanMetric(nan_strategy="disable")  # no NaN check: it would sync the host each step

    @property
    def adapter(self) -> DomainAdapter:
        return self.mae.adapter

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and isinstance(self.adapter, ConnectsDatamodule):
            self.adapter.connect_datamodule(datamodule)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record what rebuilds the model (adapter, sizes, masking-free) for `maekit export`."""
        self.check_loss_before_saving()
        hp, dec = self.hparams, self.mae.decoder_spec
        checkpoint["maekit"] = {
            "adapter": self.adapter.config(), "size": hp.size, "decoder_width": dec.width,
            "decoder_depth": dec.depth, "decoder_heads": dec.heads,
            "decoder_reads": list(hp.get("decoder_reads") or []), "prefix": "mae.", "task": "pretrain",
            "checkpoint_blocks": bool(hp.get("checkpoint_blocks", False)),
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.mae(batch, scored_only=True)
        self.watch_loss(out.loss)
        # the step value is this rank's batch (no collective per step); the epoch value is the
        # mean over every rank's samples, reduced once when the epoch ends
        self.log("train/loss_step", out.loss, prog_bar=True)
        self.train_loss.update(out.loss.detach(), out.tokens.batch_size)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        if self._figure_batch is None:  # the first (shuffled) batch, kept so epochs compare
            self._figure_batch = _first(batch, 8)
        return out.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.mae(batch, scored_only=True)
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=out.tokens.batch_size)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.mae(batch, scored_only=True)
        self.log("test/loss", out.loss, sync_dist=True, batch_size=out.tokens.batch_size)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Reconstructions in the native layout: visible tokens as given, every other position
        (masked, or absent such as a missing modality) as predicted. Images whose size is not a
        multiple of the patch are padded for the model and cropped back."""
        image = batch.get("image")
        patch = self.adapter.patch_size if isinstance(self.adapter, GridAdapter) else None
        spatial = tuple(image.shape[2:]) if image is not None else ()
        if patch is not None and image is not None:
            pads = [(-s) % patch for s in spatial]
            if any(pads):
                spec = [v for p in reversed(pads) for v in (0, p)]
                batch = {**batch, "image": torch.nn.functional.pad(image, spec)}
                if "valid" in batch:
                    batch["valid"] = torch.nn.functional.pad(batch["valid"], spec, value=False)
        out = self.mae(batch)
        values = torch.where(out.visible.mask[..., None], out.tokens.values.float(),
                             self.adapter.values_from_prediction(out.pred, out.tokens))
        native = self.adapter.untokenize(values, out.tokens)
        if spatial:
            native = native[(slice(None), slice(None), *(slice(0, s) for s in spatial))]
        return {"reconstruction": native, "visible": out.visible.mask, "loss": out.per_token}

    def on_train_epoch_end(self) -> None:
        every = self.hparams.figure_every_n_epochs
        if not every or (self.current_epoch + 1) % every or self._figure_batch is None:
            return
        if self.trainer.sanity_checking:
            return
        # the forward runs on every rank (sharded strategies gather parameters collectively);
        # rank 0 writes the picture
        rows = reconstruction_images(self.mae, self._figure_batch)
        if self.trainer.is_global_zero:
            run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            path = run_dir / "reconstructions" / f"epoch_{self.current_epoch:04d}.png"
            self.last_figure = write_figure(rows, path, title=f"epoch {self.current_epoch}")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed_training_batch(self.trainer)  # masks differ per rank and repeat exactly on resume

    def configure_model(self) -> None:
        """Record parameter ranks while the model is bare (FSDP flattens them when it wraps)."""
        if self._parameter_ranks is None:
            self._parameter_ranks = parameter_ranks(self.mae)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = hp.lr if hp.lr is not None else self._scaled_lr()
        groups = param_groups(self.mae, hp.weight_decay, self.mae.no_weight_decay(), ranks=self._parameter_ranks)
        optimizer = build_adamw(groups, lr, tuple(hp.betas))
        return {"optimizer": optimizer, "lr_scheduler": lightning_schedule(self.trainer, optimizer, hp.warmup_epochs)}

    #: below this effective batch, linear lr scaling is warned about (MAE's recipes use 1024-4096)
    SMALL_BATCH = 64

    def _scaled_lr(self) -> float:
        """base_lr * effective batch / 256, printed; warns when a small batch makes it tiny."""
        hp = self.hparams
        batch = effective_batch_size(self.trainer)
        lr = hp.base_lr * batch / 256
        if self.trainer.is_global_zero:
            print(f"maekit: learning rate {lr:.3g} = base_lr {hp.base_lr:.3g} x effective batch {batch} / 256")
        if batch < self.SMALL_BATCH:
            rank_zero_warn(
                f"the effective batch is {batch}, so the linearly scaled learning rate is only {lr:.3g}, "
                f"{256 / batch:.0f}x below base_lr {hp.base_lr:.3g} (a rate meant for batches of 256 and "
                f"more); set an absolute rate, e.g. --model.lr {hp.base_lr:.3g}, or raise --data.batch_size / "
                "--trainer.accumulate_grad_batches", category=UserWarning)
        return lr


def _first(batch: dict[str, Any], count: int) -> dict[str, Any]:
    """The first `count` samples of a batch, detached, for figures."""
    return {k: (v[:count].detach() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
