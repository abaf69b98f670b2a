"""Batched point-cloud operations in plain PyTorch: farthest-point sampling, kNN grouping and
Chamfer distance. No custom CUDA extension: they run wherever torch runs, and under
`torch.compile`, with no host syncs. Plus a NumPy farthest-point order for one cloud at a time
(data loading)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def farthest_point_sample(points: Tensor, count: int, start: Tensor | None = None) -> Tensor:
    """(B, count) indices of `count` points of `points` (B, N, 3) chosen by farthest-point
    sampling: each next point is the one farthest from those already chosen.

    `start` (B,) is the first index of every sample (default 0, as the pointnet2 kernels do).
    Distinct indices are guaranteed while `count` <= the number of distinct points.
    """
    batch, num, _ = points.shape
    if count > num:
        raise ValueError(f"cannot sample {count} points from clouds of {num}")
    xyz = points.float().transpose(1, 2).contiguous()  # (B, 3, N): each axis one contiguous row
    chosen = torch.empty(batch, count, dtype=torch.long, device=points.device)
    current = start if start is not None else torch.zeros(batch, dtype=torch.long, device=points.device)
    nearest = torch.full((batch, num), float("inf"), device=points.device)
    for i in range(count):
        chosen[:, i] = current
        centre = torch.gather(xyz, 2, current.view(batch, 1, 1).expand(batch, 3, 1))  # (B, 3, 1)
        d = xyz - centre
        torch.minimum(nearest, d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2], out=nearest)
        current = nearest.argmax(-1)
    return chosen


def farthest_point_order(xyz: np.ndarray, count: int) -> np.ndarray:
    """(count,) indices of one cloud's (N, 3) points chosen by farthest-point sampling from
    point 0, in pick order: the same picks as `farthest_point_sample`. For data loading, where
    clouds come one at a time as arrays: NumPy's in-place steps cost about a third of torch's."""
    num = len(xyz)
    if count > num:
        raise ValueError(f"cannot sample {count} points from a cloud of {num}")
    axes = np.ascontiguousarray(np.asarray(xyz, dtype=np.float32).T)  # (3, N): each axis one row
    nearest = np.full(num, np.inf, np.float32)
    distance, step = np.empty(num, np.float32), np.empty(num, np.float32)
    chosen = np.empty(count, np.int64)
    current = 0
    for i in range(count):
        chosen[i] = current
        np.subtract(axes[0], axes[0, current], out=step)
        np.multiply(step, step, out=distance)
        for axis in (1, 2):
            np.subtract(axes[axis], axes[axis, current], out=step)
            step *= step
            distance += step
        np.minimum(nearest, distance, out=nearest)
        current = int(nearest.argmax())
    return chosen


def gather_points(points: Tensor, index: Tensor) -> Tensor:
    """`points` (B, N, C) at `index` (B, ...) -> (B, ..., C)."""
    batch = points.shape[0]
    flat = index.reshape(batch, -1)
    out = torch.gather(points, 1, flat[..., None].expand(-1, -1, points.shape[-1]))
    return out.reshape(*index.shape, points.shape[-1])


def knn(queries: Tensor, points: Tensor, k: int) -> Tensor:
    """(B, M, k) indices of the `k` nearest `points` (B, N, 3) of each of `queries` (B, M, 3),
    nearest first."""
    if k > points.shape[1]:
        raise ValueError(f"cannot take {k} neighbours among {points.shape[1]} points")
    distance = torch.cdist(queries.float(), points.float())  # (B, M, N)
    return distance.topk(k, dim=-1, largest=False, sorted=True).indices


def group_points(points: Tensor, num_groups: int, group_size: int) -> tuple[Tensor, Tensor]:
    """Point-MAE grouping: FPS centres, then each centre's `group_size` nearest points.

    Args:
        points: (B, N, 3 + C) clouds; neighbours are found on xyz, extra channels ride along.
    Returns:
        neighbourhoods (B, G, K, 3 + C) with xyz relative to their centre, and centres (B, G, 3).
    """
    xyz = points[..., :3]
    centres = gather_points(xyz, farthest_point_sample(xyz, num_groups))
    index = knn(centres, xyz, group_size)  # (B, G, K)
    hood = gather_points(points, index)
    offsets = hood[..., :3] - centres[:, :, None]
    return torch.cat([offsets, hood[..., 3:]], -1), centres


def chamfer_l2(a: Tensor, b: Tensor) -> Tensor:
    """Chamfer-L2 between point sets `a` (..., K, 3) and `b` (..., L, 3): mean squared
    distance from each point of `a` to its nearest in `b` plus the same from `b` to `a`
    (Point-MAE's `ChamferDistanceL2`, per set). Returns (...) in fp32; 0 for identical sets."""
    lead = a.shape[:-2]
    a2, b2 = a.reshape(-1, *a.shape[-2:]).float(), b.reshape(-1, *b.shape[-2:]).float()
    # direct differences (not the matmul expansion, whose cancellation spoils tiny distances);
    # gradients are finite at zero distance
    d = torch.cdist(a2, b2, compute_mode="donot_use_mm_for_euclid_dist").square()  # (S, K, L)
    return (d.amin(2).mean(1) + d.amin(1).mean(1)).reshape(lead)
