"""Heads put on top of a pretrained encoder."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn


Pooling = Literal["mean", "max", "cls", "cls+max", "cls+mean"]


class PooledClassifier(nn.Module):
    """Pooled token features -> norm -> (hidden layers) -> linear.

    `pooling` picks mean or max over the valid tokens, the class token, or the class token
    concatenated with one of them (Point-MAE). With `probe=True` the norm is a BatchNorm without
    affine terms, as in MAE's linear probing. `hidden` adds Linear-BatchNorm-ReLU layers.
    """

    def __init__(self, width: int, num_classes: int, probe: bool = False, dropout: float = 0.0,
                 pooling: Pooling = "mean", hidden: list[int] | None = None) -> None:
        super().__init__()
        self.pooling = pooling
        features = 2 * width if "+" in pooling else width
        self.norm = nn.BatchNorm1d(features, affine=False) if probe else nn.LayerNorm(features)
        layers: list[nn.Module] = []
        for size in hidden or []:
            layers += [nn.Dropout(dropout), nn.Linear(features, size), nn.BatchNorm1d(size), nn.ReLU()]
            features = size
        self.hidden = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01 if probe else 2e-5)
        nn.init.zeros_(self.fc.bias)

    def pool(self, features: Tensor, valid: Tensor, cls: Tensor | None = None) -> Tensor:
        """(B, F) pooled features of (B, N, D) token `features` (invalid tokens left out)."""
        w = valid[..., None]
        parts: list[Tensor] = []
        if self.pooling.startswith("cls"):
            if cls is None:
                raise ValueError(f"pooling {self.pooling!r} needs the class token's features")
            parts.append(cls)
        if self.pooling.endswith("mean"):
            parts.append(torch.where(w, features, 0.0).sum(1) / w.sum(1).clamp(min=1).to(features.dtype))
        elif self.pooling.endswith("max"):
            parts.append(torch.where(w, features, torch.finfo(features.dtype).min).amax(1))
        return torch.cat(parts, -1)

    def forward(self, features: Tensor, valid: Tensor, cls: Tensor | None = None) -> Tensor:
        return self.fc(self.dropout(self.hidden(self.norm(self.pool(features, valid, cls)))))


class UpsamplingDecoder(nn.Module):
    """A light dense decoder: token grid (B, D, h, w) -> logits (B, classes, h*s, w*s).

    `scale` (the patch size) must be a power of two; each stage doubles the resolution with a
    3x3 conv, BatchNorm and GELU, halving the channels down to `min_channels`.
    """

    def __init__(self, width: int, num_classes: int, scale: int, min_channels: int = 32) -> None:
        super().__init__()
        stages = int(round(math.log2(scale)))
        if 2**stages != scale:
            raise ValueError(f"the upsampling decoder needs a power-of-two patch size, got {scale}")
        layers: list[nn.Module] = []
        channels = width
        for _ in range(stages):
            out = max(min_channels, channels // 2)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.GELU()]
            channels = out
        layers.append(nn.Conv2d(channels, num_classes, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, grid: Tensor) -> Tensor:
        return self.layers(grid)
