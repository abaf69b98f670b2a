"""Point clouds as tokens, the Point-MAE way: farthest-point-sampled centres, the nearest
neighbours of each centre as one token (offsets from the centre), a mini-PointNet embedding and
an MLP position on the centre, Chamfer-L2 on the masked groups.

Module names follow Point-MAE's (`point_embed.first_conv` / `second_conv`, `pos_embed`) so its
public checkpoints load with a small key table (`maekit.weights.converters`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from maekit.backbones import sincos_embedding
from maekit.domains.pointcloud.ops import chamfer_l2, group_points
from maekit.errors import ConfigError
from maekit.tokens import DomainAdapter, Tokens


class MiniPointNet(nn.Module):
    """Embeds one neighbourhood (K points, C channels) as one vector: shared MLP, max-pool, the
    pooled vector concatenated back to every point, a second shared MLP, max-pool (Point-MAE)."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv1d(in_channels, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         nn.Conv1d(512, width, 1))

    def forward(self, hoods: Tensor) -> Tensor:
        """(B, G, K, C) neighbourhoods -> (B, G, width)."""
        batch, groups, k, channels = hoods.shape
        x = hoods.reshape(batch * groups, k, channels).transpose(1, 2)  # (BG, C, K)
        x = self.first_conv(x)
        pooled = x.amax(2, keepdim=True)
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, k), x], 1))
        return x.amax(2).reshape(batch, groups, -1)


class PointCloudAdapter(DomainAdapter):
    """Adapter for batches `points` (B, N, 3 + C): xyz normalised to the unit sphere, then the
    extra channels named by `channels` (colours, normals, intensity...).

    Args:
        groups: number of tokens, each a farthest-point-sampled centre (Point-MAE: 64 for 1024
            points, 128 for 2048).
        group_size: nearest neighbours per centre (32).
        channels: names of the extra per-point channels the model takes (default none: xyz only);
            they feed the embedding; the reconstruction target is always the xyz offsets.
        position_every_block: add the centre's position before every encoder block (Point-MAE)
            rather than once at the input.
    """

    channel_kind = "channel"
    num_groups = 1

    def __init__(self, groups: int = 64, group_size: int = 32, channels: list[str] | None = None,
                 position_every_block: bool = True) -> None:
        super().__init__()
        if groups < 1 or group_size < 1:
            raise ConfigError(f"groups ({groups}) and group_size ({group_size}) must be positive")
        self.groups, self.group_size = groups, group_size
        self.channels = list(channels or [])
        self.point_channels = 3 + len(self.channels)
        self.position_every_block = position_every_block
        self.token_size = group_size * 3

    @property
    def min_points(self) -> int:
        """The fewest points a cloud needs: every centre distinct and every group full."""
        return max(self.groups, self.group_size)

    def build(self, embed_dim: int) -> None:
        self.embed_dim = embed_dim
        self.point_embed = MiniPointNet(self.point_channels, embed_dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, embed_dim))

    def connect_datamodule(self, datamodule: Any) -> None:
        """Check that the datamodule delivers the extra channels the model takes."""
        names = getattr(datamodule, "channels", None)
        if names is not None and list(names) != self.channels:
            raise ConfigError(f"the data delivers point channels {list(names)} but the model takes {self.channels}; "
                              "set the same `channels` on both")

    # ------------------------------------------------------------------------- tokens
    def tokenize(self, batch: dict[str, Any]) -> Tokens:
        points = batch["points"].float()
        if points.shape[-1] != self.point_channels:
            raise ConfigError(f"the batch has {points.shape[-1]} values per point but the model takes "
                              f"{self.point_channels} (xyz + {self.channels})")
        if points.shape[1] < self.min_points:
            raise ConfigError(f"clouds of {points.shape[1]} points are too small for {self.groups} groups of "
                              f"{self.group_size}: at least {self.min_points} points are needed")
        with torch.no_grad():
            hoods, centres = group_points(points, self.groups, self.group_size)
        batch_size = points.shape[0]
        return Tokens(
            values=hoods.flatten(2), coords=centres,
            group=torch.zeros(batch_size, self.groups, dtype=torch.long, device=points.device),
            present=torch.ones(batch_size, self.groups, dtype=torch.bool, device=points.device),
            grid=(self.groups,), may_be_absent=False,
        )

    def _hoods(self, values: Tensor) -> Tensor:
        return values.reshape(*values.shape[:2], self.group_size, -1)

    def untokenize(self, values: Tensor, tokens: Tokens) -> Tensor:
        """(B, G, K * c) token values -> (B, G * K, 3) absolute xyz of every point."""
        xyz = self._hoods(values)[..., :3] + tokens.coords[:, :, None].to(values.dtype)
        return xyz.flatten(1, 2)

    # ---------------------------------------------------------------------- embedding
    def embed_parts(self, tokens: Tokens) -> tuple[Tensor, Tensor | None]:
        content = self.point_embed(self._hoods(tokens.values))
        pos = self.pos_embed(tokens.coords.to(content.dtype))
        return (content, pos) if self.position_every_block else (content + pos, None)

    def embed(self, tokens: Tokens) -> Tensor:
        content, pos = self.embed_parts(tokens)
        return content if pos is None else content + pos

    def encode_position(self, coords: Tensor, dim: int) -> Tensor:
        # unit-sphere coordinates scaled so the sin-cos frequencies resolve group spacings
        return sincos_embedding(coords * 64.0, dim)

    # --------------------------------------------------------------------------- loss
    def target(self, tokens: Tokens) -> Tensor:
        return self._hoods(tokens.values)[..., :3].flatten(2)

    def loss(self, pred: Tensor, target: Tensor, tokens: Tokens) -> Tensor:
        """(B, G) Chamfer-L2 between each predicted and true neighbourhood."""
        return chamfer_l2(self._hoods(pred), self._hoods(target))

    def values_from_prediction(self, pred: Tensor, tokens: Tokens) -> Tensor:
        """Predicted offsets with the true group's extra channels attached (those are not
        predicted), so predictions have the width of token values."""
        if not self.channels:
            return pred
        extra = self._hoods(tokens.values)[..., 3:]
        return torch.cat([self._hoods(pred), extra.to(pred.dtype)], -1).flatten(2)

    # -------------------------------------------------------------------------- figures
    def reconstruction_pictures(self, tokens: Tokens, shown: Tensor, predicted: Tensor
                                ) -> tuple[Tensor, Tensor, Tensor]:
        """Renders of the input, its visible groups, and visible (blue) + predicted (red) groups."""
        groups = tokens.values.shape[1]
        xyz = self.untokenize(tokens.values.float(), tokens)
        xyz_pred = self.untokenize(predicted.float(), tokens)
        per_point = shown[:, :, None].expand(-1, groups, self.group_size).flatten(1)  # (B, G*K)
        blue = xyz.new_tensor([0.20, 0.35, 0.80])
        red = xyz.new_tensor([0.85, 0.20, 0.15])
        every = render_points(xyz, blue.expand_as(xyz))
        visible = render_points(xyz, blue.expand_as(xyz), keep=per_point)
        mixed = torch.where(per_point[..., None], xyz, xyz_pred)
        colours = torch.where(per_point[..., None], blue, red)
        return every, visible, render_points(mixed, colours)


def render_points(xyz: Tensor, colours: Tensor, keep: Tensor | None = None, size: int = 96,
                  azimuth: float = 45.0, elevation: float = 25.0) -> Tensor:
    """(B, size, size, 3) orthographic renders of clouds (B, P, 3) in the unit sphere, on
    white, nearer points drawn over farther ones and shaded by depth; `keep` (B, P) hides points."""
    xyz = xyz.float()
    batch, count, _ = xyz.shape
    a, e = math.radians(azimuth), math.radians(elevation)
    rot_y = xyz.new_tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rot_x = xyz.new_tensor([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    view = xyz.float() @ (rot_x @ rot_y).T
    col = ((view[..., 0] + 1) / 2 * (size - 1)).round().long().clamp(0, size - 1)
    row = ((1 - view[..., 1]) / 2 * (size - 1)).round().long().clamp(0, size - 1)
    depth = view[..., 2]  # larger is nearer
    if keep is not None:
        depth = torch.where(keep, depth, -math.inf)
    pixel = row * size + col + torch.arange(batch, device=xyz.device)[:, None] * size * size
    nearest = torch.full((batch * size * size,), -math.inf, device=xyz.device)
    nearest = nearest.scatter_reduce(0, pixel.flatten(), depth.flatten(), reduce="amax")
    front = (depth.flatten() >= nearest[pixel.flatten()]) & torch.isfinite(depth.flatten())
    shade = (0.55 + 0.45 * (depth.flatten() + 1) / 2).clamp(0, 1)[:, None]
    image = torch.ones(batch * size * size, 3, device=xyz.device)
    image[pixel.flatten()[front]] = (colours.reshape(-1, 3).float() * shade)[front]
    return image.reshape(batch, size, size, 3)
