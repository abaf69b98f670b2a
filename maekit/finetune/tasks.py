"""Fine-tuning tasks: classification (linear probe or full fine-tune) and 2D segmentation."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import Tensor, nn

from maekit.backbones import SIZES, SizeName, TransformerStack
from maekit.errors import ConfigError
from maekit.finetune.heads import Pooling, PooledClassifier, UpsamplingDecoder
from maekit.guards import LossGuard
from maekit.optim import build_adamw, lightning_schedule, param_groups, parameter_ranks
from maekit.seeding import seed_training_batch
from maekit.tokens import ConnectsDatamodule, DomainAdapter, GridAdapter, Tokens
from maekit.weights.loading import load_encoder


class EncoderTask(LossGuard, L.LightningModule):
    """A pretrained adapter + encoder with a task head; the common part of every task.

    Args:
        adapter: the domain adapter, configured as in pretraining.
        size: encoder size, as in pretraining.
        pretrained: where to take the adapter and encoder weights from: a Lightning `.ckpt`, `.pt`,
            `.safetensors`, an exported folder, an http(s) URL (`#sha256=...`), `hf://org/repo/file`
            or a registry name; None trains from scratch.
        freeze_encoder: train the head only (linear probing).
        lr: peak learning rate of the head; encoder layers get `lr * layer_decay**depth`.
        layer_decay: layer-wise lr decay (1 disables it).
        drop_path: stochastic depth in the encoder.
        weight_decay, betas, warmup_epochs: AdamW and schedule.
        class_token: give the encoder a learned class token (as ViT/MAE and Point-MAE checkpoints
            have); heads can pool it.
    """

    def __init__(
        self,
        adapter: DomainAdapter,
        size: SizeName = "tiny",
        pretrained: str | None = None,
        freeze_encoder: bool = False,
        lr: float = 1e-3,
        layer_decay: float = 0.75,
        drop_path: float = 0.1,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 1.0,
        class_token: bool = False,
    ) -> None:
        super().__init__()
        #: the encoder arguments, defaults filled in (saved with every task's hyperparameters)
        self.encoder_args: dict[str, Any] = {
            "size": size, "pretrained": pretrained, "freeze_encoder": freeze_encoder, "lr": lr,
            "layer_decay": layer_decay, "drop_path": drop_path, "weight_decay": weight_decay, "betas": betas,
            "warmup_epochs": warmup_epochs, "class_token": class_token}
        spec = SIZES[size]
        self.adapter = adapter
        adapter.build(spec.width)
        self.encoder = TransformerStack(spec.width, spec.depth, spec.heads,
                                        drop_path=0.0 if freeze_encoder else drop_path, class_token=class_token)
        self.width = spec.width
        if pretrained:  # a path, an exported folder, a URL, hf://... or a registry name
            from maekit.weights.hub import resolve

            load_encoder(self, resolve(pretrained))
        if freeze_encoder:
            for part in (self.adapter, self.encoder):
                part.requires_grad_(False)
        self._parameter_ranks: dict[str, int] | None = None

    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        """Lightning's `save_hyperparameters` from the calling task's `__init__`, plus every
        encoder argument it did not name (a task takes them as `**encoder`)."""
        import inspect

        caller = frame or inspect.currentframe().f_back  # type: ignore[union-attr]
        super().save_hyperparameters(*args, ignore=ignore, frame=caller, logger=logger)
        for name, value in self.encoder_args.items():
            self.hparams.setdefault(name, value)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and isinstance(self.adapter, ConnectsDatamodule):
            self.adapter.connect_datamodule(datamodule)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record what rebuilds the encoder for `maekit export`."""
        self.check_loss_before_saving()
        checkpoint["maekit"] = {"adapter": self.adapter.config(), "size": self.hparams.size, "prefix": "",
                                "class_token": self.encoder.num_prefix > 0, "task": type(self).__name__}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed_training_batch(self.trainer)  # dropout / drop path repeat exactly on resume

    def on_train_epoch_start(self) -> None:
        if self.hparams.freeze_encoder:
            self.adapter.eval()
            self.encoder.eval()

    def encode(self, batch: dict[str, Any], return_prefix: bool = False) -> tuple[Tokens, Tensor]:
        """Tokens and (B, N, D) encoder features of every token (absent ones not attended to);
        with `return_prefix`, the class token's features come first (B, 1 + N, D)."""
        tokens = self.adapter.tokenize(batch)
        with torch.set_grad_enabled(self.training and not self.hparams.freeze_encoder):
            x, pos = self.adapter.embed_parts(tokens)
            x = self.encoder(x, tokens.present if tokens.may_be_absent else None, pos=pos,
                             return_prefix=return_prefix)
        return tokens, x

    # -- steps shared by every task: subclasses set `target_key`, `criterion`, the metric
    # collections and, if needed, `metric_input`
    target_key = "label"

    def metric_input(self, logits: Tensor) -> Tensor:
        """What the metrics are updated with (logits, or a label map)."""
        return logits

    def loss_target(self, batch: dict[str, Any]) -> Tensor:
        """What the criterion compares the logits with."""
        return batch[self.target_key]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch)
        loss = self.criterion(logits.float(), self.loss_target(batch))
        self.watch_loss(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def _evaluate(self, batch: dict[str, Any], metrics: torchmetrics.MetricCollection, stage: str) -> None:
        logits = self(batch)
        loss = self.criterion(logits.float(), batch[self.target_key])
        metrics.update(self.metric_input(logits), batch[self.target_key])
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=logits.shape[0])
        self.log_dict(metrics, prog_bar=stage == "val", batch_size=logits.shape[0])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def _layer_of(self, name: str) -> int:
        depth = self.encoder.depth
        if name.startswith(("adapter.", "encoder.cls_")):
            return 0
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        return depth + 1

    def configure_model(self) -> None:
        """Record parameter ranks while the model is bare (FSDP flattens them when it wraps)."""
        if self._parameter_ranks is None:
            self._parameter_ranks = parameter_ranks(self)

    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay besides biases and norms: the same set as in
        pretraining (tokens, position tables, group embeddings), as MAE/timm fine-tuning does."""
        return ({f"adapter.{n}" for n in self.adapter.no_weight_decay()}
                | {f"encoder.{n}" for n in self.encoder.no_weight_decay()})

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups(self, hp.weight_decay, self.no_weight_decay(), self._layer_of, self.encoder.depth + 1,
                              hp.layer_decay, ranks=self._parameter_ranks)
        optimizer = build_adamw(groups, hp.lr, tuple(hp.betas))
        return {"optimizer": optimizer, "lr_scheduler": lightning_schedule(self.trainer, optimizer, hp.warmup_epochs)}


class ClassificationTask(EncoderTask):
    """Sample-level classification from pooled token features.

    Args:
        num_classes: number of classes (checked against the datamodule's classes).
        label_smoothing: cross-entropy label smoothing.
        pooling: how token features become one vector: `mean` (MAE), `max`, `cls` (needs
            `class_token`), or `cls+max` / `cls+mean` (concatenated, Point-MAE).
        hidden: widths of hidden layers of the head (Point-MAE: [256, 256]); [] is linear.
        dropout: dropout before each head layer.
        encoder: the encoder arguments of `EncoderTask` (size, pretrained, freeze_encoder, lr...),
            by name.
    """

    def __init__(
        self,
        adapter: DomainAdapter,
        num_classes: int,
        label_smoothing: float = 0.0,
        pooling: Pooling = "mean",
        hidden: list[int] | None = None,
        dropout: float = 0.0,
        **encoder: Any,
    ) -> None:
        if pooling.startswith("cls") and not encoder.get("class_token", False):
            raise ConfigError(f"pooling {pooling!r} needs model.class_token: true")
        super().__init__(adapter, **encoder)
        self.save_hyperparameters(ignore=["adapter"])
        probe = self.encoder_args["freeze_encoder"]
        self.head = PooledClassifier(self.width, num_classes, probe=probe, dropout=dropout,
                                     pooling=pooling, hidden=hidden or [])
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        metrics = torchmetrics.MetricCollection({
            "acc": torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro"),
            "f1": torchmetrics.classification.MulticlassF1Score(num_classes, average="macro"),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        found = getattr(datamodule, "num_classes", None)
        if found and found != self.hparams.num_classes:
            raise ConfigError(f"the data has {found} classes ({getattr(datamodule, 'classes', '')}) but "
                              f"model.num_classes is {self.hparams.num_classes}")

    def forward(self, batch: dict[str, Any]) -> Tensor:
        tokens, x = self.encode(batch, return_prefix=self.encoder.num_prefix > 0)
        return self.head(x[:, self.encoder.num_prefix:], tokens.present, x[:, 0] if self.encoder.num_prefix else None)

    def features(self, batch: dict[str, Any]) -> Tensor:
        """(B, F) pooled features before the head's layers (for SVMs and few-shot probes)."""
        tokens, x = self.encode(batch, return_prefix=self.encoder.num_prefix > 0)
        return self.head.pool(x[:, self.encoder.num_prefix:], tokens.present,
                              x[:, 0] if self.encoder.num_prefix else None)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self(batch).softmax(-1)


class SegmentationTask(EncoderTask):
    """Dense 2D segmentation: tokens back on their grid, then a light upsampling decoder.

    Args:
        num_classes: number of classes.
        ignore_index: label value excluded from loss and metrics (e.g. nodata).
        encoder: the encoder arguments of `EncoderTask`, by name (the adapter must be a 2D
            `GridAdapter`).
    """

    def __init__(
        self,
        adapter: DomainAdapter,
        num_classes: int,
        ignore_index: int = 255,
        **encoder: Any,
    ) -> None:
        super().__init__(adapter, **encoder)
        self.save_hyperparameters(ignore=["adapter"])
        if not isinstance(adapter, GridAdapter) or adapter.spatial_dims != 2:
            raise ConfigError(f"{type(adapter).__name__} is not a 2D patch-grid adapter, which segmentation needs")
        self.head = UpsamplingDecoder(self.width, num_classes, adapter.patch_size)
        self.criterion = nn.CrossEntropyLoss(ignore_index=ignore_index)
        metrics = torchmetrics.MetricCollection({
            "miou": torchmetrics.classification.MulticlassJaccardIndex(num_classes, ignore_index=ignore_index),
            "acc": torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro",
                                                                  ignore_index=ignore_index),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, batch: dict[str, Any]) -> Tensor:
        tokens, x = self.encode(batch)
        return self.head(self.adapter.to_grid(x, tokens))  # type: ignore[attr-defined]  # checked in __init__

    target_key = "mask"

    def metric_input(self, logits: Tensor) -> Tensor:
        return logits.argmax(1)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self(batch).argmax(1)
