"""Point-MAE's grouping and loss on a batch: farthest-point sampling (64 of 1024 points), kNN
(32 neighbours) and Chamfer-L2 (64 groups of 32 points), batch 32.

Compared in one process, interleaved, with
- open3d's `farthest_point_down_sample` (C++) called per cloud, for FPS;
- a naive per-sample loop of the same PyTorch code (what a port without batching does);
FPS results are checked to agree on every cloud of the batch (same start point, same picks)
before timing. The FPS target pair (maekit batched, open3d per cloud) is timed over more
interleaved rounds than the rest (`--fps-repeats`): a few milliseconds each, and its ratio is
the issue-15 target.

And the data-loading draw (Point-MAE's fine-tuning: FPS of one 10000-point ModelNet cloud to
1200 points): maekit's NumPy `farthest_point_order` against the batched FPS on that one cloud
(its CPU path) and open3d's (which returns points in index order, not pick order).

    python benchmarks/pointcloud_ops.py            # CPU
    python benchmarks/pointcloud_ops.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from maekit.domains.pointcloud.readers import open3d_module
from maekit.domains.pointcloud.ops import chamfer_l2, farthest_point_order, farthest_point_sample, knn


def timed(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def thread_timed(fn: Callable[[], object]) -> float:
    """CPU time of this thread in `fn`: on a busy machine, wall time also counts the time the
    scheduler gave to other processes (single-threaded CPU cases only)."""
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--groups", type=int, default=64)
    p.add_argument("--neighbours", type=int, default=32)
    p.add_argument("--cloud-points", type=int, default=10000, help="points of the one cloud the data draw reads")
    p.add_argument("--draw", type=int, default=1200, help="points the data draw keeps by FPS")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--fps-repeats", type=int, default=31,
                   help="interleaved rounds of the FPS target pair (maekit batched vs open3d per cloud)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: open3d's FPS is single-threaded; a busy machine also "
                        "makes multi-threaded small kernels spin)")
    a = p.parse_args()
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    o3d = open3d_module()
    torch.manual_seed(0)
    clouds = torch.rand(a.batch, a.points, 3, device=a.device) * 2 - 1
    pred = torch.randn(a.batch, a.groups, a.neighbours, 3, device=a.device) * 0.1
    target = torch.randn(a.batch, a.groups, a.neighbours, 3, device=a.device) * 0.1
    o3d_clouds = [o3d.geometry.PointCloud(o3d.utility.Vector3dVector(c.cpu().double().numpy())) for c in clouds]

    # agreement: open3d starts at point 0 and picks the farthest point each time, like ours; it
    # returns the picked points in index order
    ours = farthest_point_sample(clouds, a.groups).cpu().sort(1).values
    same = all(np.allclose(np.asarray(o3d_cloud.farthest_point_down_sample(a.groups).points),
                           clouds[i, ours[i]].cpu().double().numpy(), atol=1e-6)
               for i, o3d_cloud in enumerate(o3d_clouds))

    def batched_all() -> None:
        centres = torch.gather(clouds, 1, farthest_point_sample(clouds, a.groups)[..., None].expand(-1, -1, 3))
        knn(centres, clouds, a.neighbours)
        chamfer_l2(pred, target)

    def loop_all() -> None:
        for i in range(a.batch):
            c = clouds[i:i + 1]
            centres = torch.gather(c, 1, farthest_point_sample(c, a.groups)[..., None].expand(-1, -1, 3))
            knn(centres, c, a.neighbours)
            for g in range(a.groups):
                chamfer_l2(pred[i, g], target[i, g])

    one_cloud = np.random.default_rng(0).uniform(-1, 1, (a.cloud_points, 3)).astype(np.float32)
    one_o3d = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(one_cloud.astype(np.float64)))
    one_torch = torch.from_numpy(one_cloud)[None]
    same_draw = np.array_equal(farthest_point_order(one_cloud, a.draw),
                               farthest_point_sample(one_torch, a.draw)[0].numpy())

    cases: dict[str, Callable[[], object]] = {
        "fps maekit (batched)": lambda: farthest_point_sample(clouds, a.groups),
        "fps open3d (per cloud)": lambda: [c.farthest_point_down_sample(a.groups) for c in o3d_clouds],
        "fps per-sample loop": lambda: [farthest_point_sample(clouds[i:i + 1], a.groups) for i in range(a.batch)],
        "fps+knn+chamfer maekit (batched)": batched_all,
        "fps+knn+chamfer per-sample loop": loop_all,
        "data draw numpy (one cloud)": lambda: farthest_point_order(one_cloud, a.draw),
        "data draw torch (one cloud)": lambda: farthest_point_sample(one_torch, a.draw),
        "data draw open3d (one cloud)": lambda: one_o3d.farthest_point_down_sample(a.draw),
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(a.repeats):  # interleaved, so drifts hit every case alike
        for name, fn in cases.items():
            times[name].append(timed(fn, a.device))
    target_pair = ("fps maekit (batched)", "fps open3d (per cloud)")
    for _ in range(max(a.fps_repeats - a.repeats, 0)):  # the target pair: more rounds, still interleaved
        for name in target_pair:
            times[name].append(timed(cases[name], a.device))
    cpu_ms: dict[str, float] = {}
    if a.device == "cpu" and a.threads == 1:  # a diagnostic beside the wall-time target: the pair's CPU time
        cpu_times: dict[str, list[float]] = {name: [] for name in target_pair}
        for _ in range(a.fps_repeats):
            for name in target_pair:
                cpu_times[name].append(thread_timed(cases[name]))
        cpu_ms = {name: statistics.median(t) * 1000 for name, t in cpu_times.items()}
    ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
    lines = [f"device={a.device} threads={torch.get_num_threads()} batch={a.batch} points={a.points} "
             f"groups={a.groups} neighbours={a.neighbours}; medians of {a.repeats} interleaved rounds "
             f"({max(a.fps_repeats, a.repeats)} for the first two)", "", "| case | median ms |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in ms.items()]
    fps_ratio = ms["fps maekit (batched)"] / ms["fps open3d (per cloud)"]
    lines += ["", f"FPS maekit / open3d time: {fps_ratio:.2f}x (goal <= 1.0x); same picks as open3d on all "
              f"{a.batch} clouds: {same}"]
    if cpu_ms:
        lines += [f"(by this thread's CPU time, which leaves out time other processes had: "
                  f"{cpu_ms[target_pair[0]]:.2f} vs {cpu_ms[target_pair[1]]:.2f} ms, "
                  f"{cpu_ms[target_pair[0]] / cpu_ms[target_pair[1]]:.2f}x)"]
    markdown = "\n".join(lines)
    print(markdown)
    result = {
        "device": a.device, "threads": torch.get_num_threads(), "batch": a.batch, "points": a.points, "groups": a.groups, "neighbours": a.neighbours,
        "fps_same_as_open3d": bool(same), "ms": {k: round(v, 2) for k, v in ms.items()},
        "fps_cpu_time_ms": {k: round(v, 2) for k, v in cpu_ms.items()},
        "fps_speedup_vs_open3d": round(ms["fps open3d (per cloud)"] / ms["fps maekit (batched)"], 2),
        "fps_speedup_vs_loop": round(ms["fps per-sample loop"] / ms["fps maekit (batched)"], 2),
        "all_speedup_vs_loop": round(ms["fps+knn+chamfer per-sample loop"] / ms["fps+knn+chamfer maekit (batched)"], 2),
        "draw_same_as_torch": bool(same_draw),
        "draw_speedup_vs_torch": round(ms["data draw torch (one cloud)"] / ms["data draw numpy (one cloud)"], 2),
        "draw_speedup_vs_open3d": round(ms["data draw open3d (one cloud)"] / ms["data draw numpy (one cloud)"], 2),
        "targets": [{"target": "FPS vs open3d", "value": round(fps_ratio, 3), "goal": "<= 1.0x",
                     "met": bool(fps_ratio <= 1.0 and same)}],
        "markdown": markdown,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
