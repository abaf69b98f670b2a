"""Heads put on top of a pretrained encoder."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PooledClassifier(nn.Module):
    """Mean of the valid token features -> norm -> linear.

    With `probe=True` the norm is a BatchNorm without affine terms, as in MAE's linear probing.
    """

    def __init__(self, width: int, num_classes: int, probe: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False) if probe else nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01 if probe else 2e-5)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: Tensor, valid: Tensor) -> Tensor:
        w = valid[..., None]
        pooled = torch.where(w, features, 0.0).sum(1) / w.sum(1).clamp(min=1).to(features.dtype)
        return self.fc(self.dropout(self.norm(pooled)))


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
