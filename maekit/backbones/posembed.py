"""Position embeddings over continuous N-D coordinates."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sincos_embedding(coords: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed sin-cos code of continuous coordinates.

    Args:
        coords: (..., K) positions in any units (patch index, millimetres, metres...).
        dim: output width; split evenly over the K axes, each half sine, half cosine.
            Columns left over when `dim` is not a multiple of 2K are zero.
    Returns:
        (..., dim) float32 embedding; distinct for distinct coordinates.
    """
    num_axes = coords.shape[-1]
    per_axis = (dim // (2 * num_axes)) * 2
    if per_axis == 0:
        raise ValueError(f"width {dim} is too small for a {num_axes}-D sin-cos embedding")
    half = per_axis // 2
    omega = torch.arange(half, device=coords.device, dtype=torch.float32) / max(half, 1)
    omega = 1.0 / temperature**omega  # (half,)
    angles = coords.float().unsqueeze(-1) * omega  # (..., K, half)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., K * per_axis)
    if emb.shape[-1] < dim:
        emb = nn.functional.pad(emb, (0, dim - emb.shape[-1]))
    return emb


class LearnedPositionTable(nn.Module):
    """A learned embedding per integer grid position, the alternative to sin-cos.

    Coordinates are integer indices on a fixed grid (e.g. patch row/col); callers check that their
    grid fits (positions outside it would alias), as `PatchGridAdapter` does.
    """

    def __init__(self, grid: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.table = nn.Parameter(torch.zeros(math.prod(self.grid), dim))
        nn.init.trunc_normal_(self.table, std=0.02)
        strides = [math.prod(self.grid[i + 1 :]) for i in range(len(self.grid))]
        self.register_buffer("strides", torch.tensor(strides, dtype=torch.long), persistent=False)

    def forward(self, coords: Tensor) -> Tensor:
        flat = (coords.round().long() * self.strides).sum(-1)
        return self.table[flat]
