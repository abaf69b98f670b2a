"""Batched point-cloud operations in plain PyTorch: farthest-point sampling, kNN grouping and
Chamfer distance. No custom CUDA extension: they run wherever torch runs, and under
`torch.compile`, with no host syncs (farthest-point sampling on CPU takes a NumPy-assisted path
with the same picks, see `farthest_point_sample`). Plus a NumPy farthest-point order for one
cloud at a time (data loading)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def farthest_point_sample(points: Tensor, count: int, start: Tensor | None = None) -> Tensor:
    """(B, count) indices of `count` points of `points` (B, N, 3) chosen by farthest-point
    sampling: each next point is the one farthest from those already chosen (the first of
    equally far ones), by squared distances summed as (dx² + dy²) + dz² in fp32.

    `start` (B,) is the first index of every sample (default 0, as the pointnet2 kernels do),
    each in [0, N): checked on CPU (a `ValueError`); elsewhere an index out of range fails in
    torch's gather, as checking it would cost a host sync. Distinct indices are guaranteed while `count` <= the number of distinct points. Indices
    carry no gradient; `points` may require one.

    Two code paths, same picks bit for bit: on CPU (outside `torch.compile` tracing) the steps
    run through NumPy views of the same buffers (`_farthest_point_sample_cpu`), because
    torch's CPU argmax and per-call overhead make the torch loop about twice as slow there as
    open3d's C++; on every other device, and when compiled, the torch loop
    (`_farthest_point_sample_torch`): a few kernels per step, no allocation, no host sync.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"farthest_point_sample takes points of shape (B, N, 3), got {tuple(points.shape)}")
    batch, num = points.shape[:2]
    if count < 0 or count > num:
        raise ValueError(f"cannot sample {count} points from clouds of {num}")
    if start is not None and start.shape != (batch,):
        raise ValueError(f"start must hold one index per cloud, shape ({batch},), got {tuple(start.shape)}")
    if points.device.type == "cpu" and not torch.compiler.is_compiling():
        return _farthest_point_sample_cpu(points, count, start)
    return _farthest_point_sample_torch(points, count, start)


def _farthest_point_sample_torch(points: Tensor, count: int, start: Tensor | None) -> Tensor:
    """The device-agnostic FPS loop (any device, traceable by `torch.compile`): each step is
    seven kernels writing into preallocated buffers (no allocation, no host sync): gather the
    new centre, squared distances to it, a running minimum, argmax."""
    batch, num, _ = points.shape
    device = points.device
    xyz = points.detach().float().transpose(1, 2).contiguous()  # (B, 3, N): each axis one contiguous row
    picks = torch.zeros(count, batch, dtype=torch.long, device=device)  # row i: the i-th pick of every sample
    if start is not None and count:
        picks[0] = start
    rows = picks.unbind(0)
    centre_index = picks.view(count, batch, 1, 1).expand(count, batch, 3, 1).unbind(0)  # views of the rows
    centre = torch.empty(batch, 3, 1, device=device)
    diff = torch.empty(batch, 3, num, device=device)
    dx, dy, dz = diff.unbind(1)
    distance = torch.empty(batch, num, device=device)
    nearest = torch.full((batch, num), float("inf"), device=device)
    # squared distances are >= +0, and such floats order as their bit patterns read as int32:
    # the integer argmax (no NaN handling) is faster on CPU and picks the same first maximum
    nearest_bits = nearest.view(torch.int32)
    for i in range(count - 1):
        torch.gather(xyz, 2, centre_index[i], out=centre)
        torch.sub(xyz, centre, out=diff)
        diff.mul_(diff)
        torch.add(dx, dy, out=distance).add_(dz)  # (dx² + dy²) + dz², the order of every earlier version
        torch.minimum(nearest, distance, out=nearest)
        torch.argmax(nearest_bits, 1, out=rows[i + 1])
    return picks.t()


def _farthest_point_sample_cpu(points: Tensor, count: int, start: Tensor | None) -> Tensor:
    """The CPU FPS loop: the torch loop's arithmetic, with each step's cheap parts done by NumPy
    on views of the same buffers (about 1 us per call instead of torch's 3-5 us), and the argmax
    by NumPy's SIMD argmax (about 2 us on 32 x 1024 values; torch's takes about 40 us). Each
    axis's broadcast subtract-and-square stays one torch kernel (`mse_loss` without reduction
    computes (a - b) * (a - b), exactly the torch loop's sub and mul; NumPy's broadcast subtract
    alone is slower), written into one (B, N) buffer at a time to keep the working set small.
    Same (dx² + dy²) + dz² in fp32, same first maximum: same picks."""
    batch, num, _ = points.shape
    axes = points.detach().float().permute(2, 0, 1).contiguous()  # (3, B, N): each axis one (B, N) block
    picks = torch.zeros(count, batch, dtype=torch.long)  # row i: the i-th pick of every sample
    chosen = picks.numpy()
    if start is not None and count:
        first = start.detach().cpu().long()
        if bool(((first < 0) | (first >= num)).any()):
            raise ValueError(f"start indices must lie in [0, {num}), got {first.tolist()}")
        chosen[0] = first.numpy()
    flat = axes.view(3, batch * num)
    offsets = np.arange(batch, dtype=np.int64) * num  # a pick's position in `flat`'s rows
    where = torch.zeros(batch, dtype=torch.long)
    centre = torch.empty(3, batch)
    (x, y, z), (cx, cy, cz) = axes, centre[:, :, None]
    square, distance = torch.empty(batch, num), torch.empty(batch, num)
    square_np, distance_np, where_np = square.numpy(), distance.numpy(), where.numpy()
    nearest = np.full((batch, num), np.inf, np.float32)
    nearest_bits = nearest.view(np.int32)  # see the torch loop: same order, no NaN handling
    square_difference, index_select, add = torch._C._nn.mse_loss, torch.index_select, np.add
    no_reduction = 0  # torch.nn._reduction.get_enum("none")
    for i in range(count - 1):
        add(chosen[i], offsets, out=where_np)
        index_select(flat, 1, where, out=centre)
        square_difference(x, cx, no_reduction, out=distance)
        square_difference(y, cy, no_reduction, out=square)
        add(distance_np, square_np, out=distance_np)
        square_difference(z, cz, no_reduction, out=square)
        add(distance_np, square_np, out=distance_np)
        np.minimum(nearest, distance_np, out=nearest)
        nearest_bits.argmax(1, out=chosen[i + 1])
    return picks.t()


def farthest_point_order(xyz: np.ndarray, count: int) -> np.ndarray:
    """(count,) indices of one cloud's (N, 3) points chosen by farthest-point sampling from
    point 0, in pick order: the same picks as `farthest_point_sample`. For data loading, where
    clouds come one at a time as arrays: plain NumPy in place, within about 10 % of
    `farthest_point_sample`'s CPU path on one large cloud, faster on small ones."""
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


#: distances held at once by `knn` (B x M x block): about 16 MiB of fp32 plus their int64 keys
KNN_BLOCK_ELEMENTS = 1 << 22


def knn(queries: Tensor, points: Tensor, k: int, block: int | None = None) -> Tensor:
    """(B, M, k) indices of the `k` nearest `points` (B, N, 3) of each of `queries` (B, M, 3),
    nearest first; equally near points in index order (deterministic on every device).

    The (B, M, N) distance matrix is never held whole when it is large: points are taken in
    blocks of `block` (default: as many as keep B x M x block <= `KNN_BLOCK_ELEMENTS`), and a
    running top-k is merged with each block's. Squared distances are direct differences, each
    computed the same way whatever the blocking, so the results do not depend on it.
    """
    batch, num = points.shape[:2]
    if k > num:
        raise ValueError(f"cannot take {k} neighbours among {num} points")
    if block is None:
        block = max(k, KNN_BLOCK_ELEMENTS // max(batch * queries.shape[1], 1))
    elif block < 1:
        raise ValueError(f"knn block must be a positive number of points, got {block}")
    q = queries.detach().float().transpose(1, 2)[..., None]  # (B, 3, M, 1)
    p = points.detach().float().transpose(1, 2)[:, :, None]  # (B, 3, 1, N)
    best: Tensor | None = None
    for first in range(0, num, block):
        keys = _distance_keys(q, p[..., first:first + block], first)
        if best is not None:
            keys = torch.cat([best, keys], -1)
        best = keys.topk(min(k, keys.shape[-1]), dim=-1, largest=False, sorted=True).values
    assert best is not None
    return best & 0xFFFFFFFF


def _distance_keys(q: Tensor, p: Tensor, first: int) -> Tensor:
    """(B, M, C) int64 keys ordering (squared distance, index) lexicographically, from queries
    `q` (B, 3, M, 1) and points `p` (B, 3, 1, C) numbered from `first`: the distance's float
    bits (a float >= 0 orders as its bits read as int32) times 2^32 plus the point's index."""
    distance = torch.sub(q[:, 0], p[:, 0])
    distance.mul_(distance)
    step = torch.sub(q[:, 1], p[:, 1])
    distance.addcmul_(step, step)
    torch.sub(q[:, 2], p[:, 2], out=step)
    distance.addcmul_(step, step)
    index = torch.arange(first, first + distance.shape[-1], device=distance.device)
    return torch.add(index, distance.view(torch.int32), alpha=1 << 32)


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
