"""3D segmentation with a UNETR-style decoder (MONAI blocks) over a pretrained encoder.

Skips come from several encoder depths (blocks 3, 6, 9, 12 of a 12-block encoder with 16^3
patches, as in UNETR; one stage per prime factor of any other patch size, e.g. 12^3 -> 2, 2, 3); each depth's tokens are put back on their grid with the tokens of the
available modalities averaged, so any modality subset runs through the same weights.
Validation and prediction on whole volumes use MONAI's sliding-window inference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from maekit.backbones import SizeName
from maekit.errors import ConfigError
from maekit.finetune.tasks import EncoderTask
from maekit.tokens import DomainAdapter, GridAdapter


def upsampling_factors(patch_size: int) -> list[int]:
    """The patch size as upsampling factors, coarse to fine: its prime factors, twos first
    (16 -> [2, 2, 2, 2]; 12, Hi-End-MAE's patch -> [2, 2, 3]; 7 -> [7])."""
    if patch_size < 2:
        raise ConfigError(f"the UNETR decoder needs a patch size of at least 2, got {patch_size}")
    factors, rest, p = [], patch_size, 2
    while rest > 1:
        while rest % p == 0:
            factors.append(p)
            rest //= p
        p += 1
    return factors


class _ProjectionUp(nn.Module):
    """Encoder tokens on their grid -> a finer grid by a chain of transposed convolutions, one
    per factor (MONAI's `UnetrPrUpBlock` without conv blocks, with a factor per layer, and the
    same parameter names)."""

    def __init__(self, in_channels: int, out_channels: int, factors: list[int]) -> None:
        super().__init__()
        from monai.networks.blocks.dynunet_block import get_conv_layer

        def up(cin: int, f: int) -> nn.Module:
            return get_conv_layer(3, cin, out_channels, kernel_size=f, stride=f, conv_only=True, is_transposed=True)

        self.transp_conv_init = up(in_channels, factors[0])
        self.blocks = nn.ModuleList(up(out_channels, f) for f in factors[1:])

    def forward(self, x: Tensor) -> Tensor:
        x = self.transp_conv_init(x)
        for block in self.blocks:
            x = block(x)
        return x


class UNETRDecoder(nn.Module):
    """Encoder features at one depth per upsampling stage -> per-voxel logits.

    One upsampling stage per prime factor of the patch size (`upsampling_factors`): a power of
    two gives UNETR's stages of 2, Hi-End-MAE's 12^3 patch gives stages of 2, 2 and 3.

    Args:
        in_channels: channels of the full-resolution image skip (model modalities).
        width: encoder width.
        patch_size: any size >= 2.
        num_classes: output classes.
        feature_size: channels at full resolution (doubling per stage down).
    """

    def __init__(self, in_channels: int, width: int, patch_size: int, num_classes: int, feature_size: int = 16) -> None:
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

        factors = upsampling_factors(patch_size)
        stages = len(factors)
        self.stages, self.factors = stages, factors
        channels = [width] + [feature_size * 2 ** (stages - level) for level in range(1, stages + 1)]
        norm = "instance"
        self.image_skip = UnetrBasicBlock(3, in_channels, feature_size, 3, 1, norm, res_block=True)
        # the skip feeding stage `level` is upsampled by the factors of the stages before it
        self.token_skips = nn.ModuleList(_ProjectionUp(width, channels[level], factors[:level])
                                         for level in range(1, stages))
        self.ups = nn.ModuleList(UnetrUpBlock(3, channels[level - 1], channels[level], 3, factors[level - 1], norm,
                                              res_block=True)
                                 for level in range(1, stages + 1))
        self.out = UnetOutBlock(3, feature_size, num_classes)

    @staticmethod
    def skip_blocks(depth: int, patch_size: int) -> list[int]:
        """1-based encoder blocks feeding levels 1..stages-1 (coarse to fine), then the last."""
        stages = len(upsampling_factors(patch_size))
        return [max(1, round(depth * (stages - level) / stages)) for level in range(1, stages)] + [depth]

    def forward(self, image: Tensor, grids: list[Tensor]) -> Tensor:
        """`grids`: features on the token grid for levels 1..stages-1, then the deepest."""
        x = grids[-1]
        skips = [block(g) for block, g in zip(self.token_skips, grids[:-1])] + [self.image_skip(image)]
        for up, skip in zip(self.ups, skips):
            x = up(x, skip)
        return self.out(x)


class VolumeSegmentationTask(EncoderTask):
    """3D segmentation of volumes (MRI with any modality subset, CT).

    Args:
        num_classes: classes including background (labels are indices, see `VolumeDataModule.labels`).
        roi_size: training crop; also the sliding window for whole-volume validation/prediction.
        overlap: sliding-window overlap.
        feature_size: UNETR decoder channels at full resolution.
        encoder: the other arguments of `EncoderTask`, by name (the adapter must be a 3D
            `GridAdapter`, e.g. `VolumeAdapter`).
    """

    target_key = "mask"

    def __init__(
        self,
        adapter: DomainAdapter,
        num_classes: int,
        roi_size: list[int] | None = None,
        size: SizeName = "base",
        lr: float = 1e-4,
        overlap: float = 0.5,
        feature_size: int = 16,
        **encoder: Any,
    ) -> None:
        super().__init__(adapter, size=size, lr=lr, **encoder)
        self.save_hyperparameters(ignore=["adapter"])
        if not isinstance(adapter, GridAdapter) or adapter.spatial_dims != 3:
            raise ConfigError(f"{type(adapter).__name__} is not a 3D patch adapter")
        patch = adapter.patch_size
        self.roi_size = list(roi_size or [96, 96, 96])
        self.blocks = UNETRDecoder.skip_blocks(self.encoder.depth, patch)
        self.head = UNETRDecoder(len(adapter.channels), self.width, patch, num_classes, feature_size)  # type: ignore[attr-defined]
        from monai.losses import DiceCELoss
        from monai.metrics import DiceMetric

        self.criterion = DiceCELoss(to_onehot_y=True, softmax=True)
        self.dice = {"val": DiceMetric(include_background=False, reduction="mean_batch"),
                     "test": DiceMetric(include_background=False, reduction="mean_batch")}

    def forward(self, batch: dict[str, Any]) -> Tensor:
        tokens = self.adapter.tokenize(batch)
        with torch.set_grad_enabled(self.training and not self.hparams.freeze_encoder):
            x, pos = self.adapter.embed_parts(tokens)
            valid = tokens.present if tokens.may_be_absent else None
            last, taken = self.encoder(x, valid, collect=tuple(sorted(set(self.blocks))), pos=pos)
        by_block = dict(zip(sorted(set(self.blocks)), taken))
        by_block[self.encoder.depth] = last
        grids = [self.adapter.to_grid(by_block[b], tokens) for b in self.blocks]  # type: ignore[operator]
        image = self.adapter.prepare(batch)  # type: ignore[attr-defined]
        return self.head(image, grids)

    def loss_target(self, batch: dict[str, Any]) -> Tensor:
        return batch["mask"].unsqueeze(1)  # DiceCELoss wants (B, 1, X, Y, Z)

    def infer(self, batch: dict[str, Any]) -> Tensor:
        """Logits for whole volumes by sliding window (crops of `roi_size`)."""
        from monai.inferers import sliding_window_inference

        present = batch.get("modality_present")

        def predictor(window: Tensor) -> Tensor:
            part = {"image": window}
            if present is not None:
                part["modality_present"] = present.expand(window.shape[0], -1)
            return self(part)

        return sliding_window_inference(batch["image"], self.roi_size, 1, predictor, overlap=self.hparams.overlap)

    def _evaluate(self, batch: dict[str, Any], metrics: Any, stage: str) -> None:
        logits = self.infer(batch)
        loss = self.criterion(logits.float(), self.loss_target(batch))
        num_classes = logits.shape[1]
        pred = nn.functional.one_hot(logits.argmax(1), num_classes).movedim(-1, 1)
        truth = nn.functional.one_hot(batch["mask"], num_classes).movedim(-1, 1)
        self.dice[stage](pred, truth)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=logits.shape[0])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, None, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, None, "test")

    def _log_dice(self, stage: str) -> None:
        per_class = self.dice[stage].aggregate()
        self.dice[stage].reset()
        scores = torch.nan_to_num(per_class, nan=0.0)
        self.log(f"{stage}/dice", scores.mean(), prog_bar=True, sync_dist=True)
        for k, value in enumerate(scores, start=1):
            self.log(f"{stage}/dice_{k}", value, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_dice("val")

    def on_test_epoch_end(self) -> None:
        self._log_dice("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self.infer(batch).argmax(1)
