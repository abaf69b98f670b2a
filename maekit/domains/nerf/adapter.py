"""NeRF radiance grids as tokens: 3D patches (4^3 by default) of [r, g, b, alpha] voxels.

The loss follows NeRF-MAE (Irshad et al., 2024): RGB is scored only where the target is
occupied (alpha > 0.01; a NeRF's colour in empty space is meaningless), alpha everywhere in the
masked grid, with the predicted alpha through a sigmoid. Grids are padded to a common size; a
patch made only of padding is an absent token, and padded voxels of a partly padded patch carry
weight 0 in the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor

from maekit.domains.nerf.spec import NERF_CHANNELS
from maekit.domains.patches import PatchGridAdapter
from maekit.errors import ConfigError
from maekit.tokens import Tokens


@dataclass
class VoxelTokens(Tokens):
    """`Tokens` of a voxel grid with the validity of every voxel of every patch.

    Attributes:
        voxel_valid: (B, N, patch**3) float, 1 on real voxels and 0 on padding; None when the
            batch had no padding.
    """

    voxel_valid: Tensor | None = None

    def gather(self, index: Tensor) -> VoxelTokens:
        out = super().gather(index)
        if self.voxel_valid is None:
            return out  # type: ignore[return-value]
        idx = index[..., None].expand(-1, -1, self.voxel_valid.shape[-1])
        return replace(out, voxel_valid=torch.gather(self.voxel_valid, 1, idx))  # type: ignore[return-value]


class NerfAdapter(PatchGridAdapter):
    """Adapter for (B, 4, X, Y, Z) grids of [r, g, b, alpha] (see `maekit.domains.nerf.readers`).

    The batch may carry `valid` (B, X, Y, Z) bool, False on padding.

    Args:
        patch_size: edge of the cubic patches in voxels (NeRF-MAE: 4).
        alpha_threshold: RGB is scored where the target alpha exceeds this (NeRF-MAE: 0.01).
        rgb_weight, alpha_weight: weights of the two terms of the per-token loss.
        alpha_activation: 'sigmoid' (NeRF-MAE) squashes the predicted alpha into (0, 1) before the
            loss and in reconstructions; 'none' scores it as predicted.
        position, max_grid: as in `PatchGridAdapter`.
    """

    channel_kind = "channel"

    def __init__(
        self,
        patch_size: int = 4,
        alpha_threshold: float = 0.01,
        rgb_weight: float = 1.0,
        alpha_weight: float = 1.0,
        alpha_activation: Literal["sigmoid", "none"] = "sigmoid",
        position: Literal["sincos", "learned"] = "sincos",
        max_grid: int = 64,
    ) -> None:
        super().__init__(NERF_CHANNELS, [NERF_CHANNELS], patch_size, 3, None, norm_pix_loss=False, loss="mse",
                         position=position, max_grid=max_grid)
        if rgb_weight < 0 or alpha_weight < 0 or rgb_weight + alpha_weight == 0:
            raise ConfigError(f"rgb_weight ({rgb_weight}) and alpha_weight ({alpha_weight}) must be >= 0, not both 0")
        self.alpha_threshold, self.rgb_weight, self.alpha_weight = alpha_threshold, rgb_weight, alpha_weight
        self.alpha_activation = alpha_activation
        self.voxels = patch_size**3

    def prepare(self, batch: dict[str, Any]) -> Tensor:
        image = batch["image"]
        if image.dim() != 5 or image.shape[1] != 4:
            raise ConfigError(f"NeRF batches are (B, 4, X, Y, Z) [r, g, b, alpha], got {tuple(image.shape)}")
        return image.float()

    def _patch_voxels(self, grid: Tensor) -> Tensor:
        """(B, X, Y, Z) -> (B, N, patch**3) in the voxel order of a token's values."""
        b, p = grid.shape[0], self.patch_size
        n = [s // p for s in grid.shape[1:]]
        v = grid.reshape(b, n[0], p, n[1], p, n[2], p).permute(0, 1, 3, 5, 2, 4, 6)
        return v.reshape(b, math.prod(n), p**3)

    def tokenize(self, batch: dict[str, Any]) -> VoxelTokens:
        valid = batch.get("valid")
        plain = super().tokenize({k: v for k, v in batch.items() if k != "valid"})
        base = {f.name: getattr(plain, f.name) for f in fields(Tokens)}
        if valid is None:
            return VoxelTokens(**base)
        voxel_valid = self._patch_voxels(valid).to(plain.values.dtype)  # (B, N, p^3)
        keep = voxel_valid.repeat(1, 1, len(self.channels)) > 0  # values are channel-major
        base.update(values=torch.where(keep, plain.values, 0.0), present=voxel_valid.amax(-1) > 0,
                    may_be_absent=True)
        return VoxelTokens(**base, voxel_valid=voxel_valid)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, 4 * p^3) -> rgb (B, N, 3, p^3) and alpha (B, N, p^3)."""
        x = x.reshape(*x.shape[:2], len(self.channels), self.voxels)
        return x[:, :, :3], x[:, :, 3]

    def loss(self, pred: Tensor, target: Tensor, tokens: Tokens) -> Tensor:
        """(B, N): alpha MSE over a token's real voxels + RGB MSE over its occupied real voxels."""
        pred_rgb, pred_alpha = self._split(pred.float())
        true_rgb, true_alpha = self._split(target.float())
        if self.alpha_activation == "sigmoid":
            pred_alpha = pred_alpha.sigmoid()
        weight = getattr(tokens, "voxel_valid", None)
        if weight is None:
            weight = torch.ones_like(true_alpha)
        real = weight > 0
        # torch.where, not a product, so whatever is predicted on padding (even NaN) cannot leak in
        alpha_error = torch.where(real, (pred_alpha - true_alpha) ** 2, 0.0)
        alpha_loss = alpha_error.sum(-1) / weight.sum(-1).clamp(min=1.0)
        occupied = real & (true_alpha > self.alpha_threshold)
        rgb_error = torch.where(occupied, ((pred_rgb - true_rgb) ** 2).mean(2), 0.0)
        rgb_loss = rgb_error.sum(-1) / occupied.sum(-1).clamp(min=1).to(rgb_error.dtype)
        return self.alpha_weight * alpha_loss + self.rgb_weight * rgb_loss

    def values_from_prediction(self, pred: Tensor, tokens: Tokens) -> Tensor:
        """Predictions as voxel values: alpha through the sigmoid (if used), padding empty (0)."""
        rgb, alpha = self._split(pred)
        if self.alpha_activation == "sigmoid":
            alpha = alpha.sigmoid()
        values = torch.cat([rgb, alpha[:, :, None]], 2)
        weight = getattr(tokens, "voxel_valid", None)
        if weight is not None:
            values = torch.where(weight[:, :, None] > 0, values, 0.0)
        return values.reshape(pred.shape)

    def picture(self, native: Tensor) -> Tensor:
        """(B, 4, X, Y, Z) -> (B, X, Y, 3): the grid rendered from above (front-to-back alpha
        compositing down the last, vertical, axis)."""
        alpha = native[:, 3].float().clamp(0, 1).flip(-1)  # top first
        rgb = native[:, :3].float().flip(-1)
        through = torch.cumprod(1.0 - alpha, -1)
        transmittance = torch.cat([torch.ones_like(through[..., :1]), through[..., :-1]], -1)
        weights = transmittance * alpha
        return (rgb * weights[:, None]).sum(-1).permute(0, 2, 3, 1)
