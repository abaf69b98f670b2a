"""NeRF grids without a NeRF: seeded indoor-like sample scenes, and coloured meshes or point
clouds (ScanNet-style scans) voxelised into RGB + density grids in the NeRF-MAE `.npz` format.

Both write `rgbsigma` (W, L, H, 4) float32 (RGB in [0, 1], a raw density in the chosen
convention, see `maekit.domains.nerf.readers.density_to_alpha`) and `resolution` (W, L, H); H (the
last axis) is up.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from maekit.domains.nerf.readers import DensityMode, alpha_to_density
from maekit.errors import DataError
from maekit.files import atomic_output, write_text_atomic
from maekit.domains.registry import Example, SampleOptions
from maekit.progress import progress, say

#: voxel labels of the sample scenes (0 is empty space)
SEMANTIC_CLASSES = ["empty", "floor", "wall", "bed", "table", "chair", "cabinet"]
#: scene classes of the sample scenes, told apart by their furniture
SCENE_CLASSES = ["bedroom", "dining_room", "storage_room"]
#: the opacity written for occupied voxels (its density in every convention is finite)
OCCUPIED_ALPHA = 0.99995
_PALETTE = {1: (0.55, 0.40, 0.25), 2: (0.85, 0.85, 0.80), 3: (0.25, 0.35, 0.75), 4: (0.60, 0.45, 0.30),
            5: (0.20, 0.20, 0.22), 6: (0.90, 0.90, 0.95)}


def write_nerf_grid(path: str | Path, rgbsigma: np.ndarray, **extra: Any) -> Path:
    """Write a grid `.npz` (`rgbsigma`, `resolution` and any `extra` arrays) atomically."""
    path = Path(path)
    grid = np.asarray(rgbsigma, dtype=np.float32)
    if grid.ndim != 4 or grid.shape[-1] != 4:
        raise ValueError(f"rgbsigma must be (W, L, H, 4), got {grid.shape}")
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, rgbsigma=grid, resolution=np.asarray(grid.shape[:3], np.int64), **extra)
    return path


def _empty_density(mode: DensityMode) -> float:
    """The density written for empty space: alpha ~0 in the convention (exactly 0 where it can be)."""
    return -10.0 if mode == "instant_ngp" else 0.0  # instant_ngp: alpha = 4.5e-7


# ----------------------------------------------------------------------------- sample scenes
def _box(semantic: np.ndarray, rgb: np.ndarray, lo: tuple[int, int, int], hi: tuple[int, int, int], label: int,
         colour: np.ndarray) -> None:
    """Fill the voxels [lo, hi) with `label` and `colour` (clipped to the grid)."""
    shape = semantic.shape
    sl = tuple(slice(max(0, int(a)), min(s, max(int(a) + 1, int(b)))) for a, b, s in zip(lo, hi, shape))
    semantic[sl] = label
    rgb[sl] = colour


def _colour(label: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.asarray(_PALETTE[label]) + rng.uniform(-0.12, 0.12, 3), 0.0, 1.0)


def _furniture(kind: str, semantic: np.ndarray, rgb: np.ndarray, rng: np.random.Generator) -> None:
    """Place one piece of furniture at a random spot on the floor (z = 1 upwards)."""
    w, length, h = semantic.shape
    r = max(w, length)
    sizes = {"bed": (0.45, 0.28, 0.12), "table": (0.30, 0.22, 0.22), "chair": (0.12, 0.12, 0.28),
             "cabinet": (0.16, 0.12, 0.40)}
    fx, fy, fz = sizes[kind]
    sx, sy = max(2, round(fx * r * rng.uniform(0.85, 1.15))), max(2, round(fy * r * rng.uniform(0.85, 1.15)))
    if rng.random() < 0.5:
        sx, sy = sy, sx
    sz = max(2, min(h - 2, round(fz * r * rng.uniform(0.9, 1.1))))
    x0, y0 = int(rng.integers(1, max(2, w - sx))), int(rng.integers(1, max(2, length - sy)))
    label = SEMANTIC_CLASSES.index(kind)
    colour = _colour(label, rng)
    if kind == "bed":  # mattress + headboard
        _box(semantic, rgb, (x0, y0, 1), (x0 + sx, y0 + sy, 1 + max(2, sz // 2)), label, colour)
        _box(semantic, rgb, (x0, y0, 1), (x0 + 1, y0 + sy, 1 + sz), label, colour * 0.8)
    elif kind == "table":  # top slab on four legs
        _box(semantic, rgb, (x0, y0, sz), (x0 + sx, y0 + sy, sz + 1), label, colour)
        for lx, ly in ((x0, y0), (x0 + sx - 1, y0), (x0, y0 + sy - 1), (x0 + sx - 1, y0 + sy - 1)):
            _box(semantic, rgb, (lx, ly, 1), (lx + 1, ly + 1, sz), label, colour * 0.85)
    elif kind == "chair":  # seat + back
        seat = max(2, sz // 2)
        _box(semantic, rgb, (x0, y0, 1), (x0 + sx, y0 + sy, 1 + seat), label, colour)
        _box(semantic, rgb, (x0, y0, 1), (x0 + sx, y0 + 1, 1 + sz), label, colour * 1.2)
    else:  # cabinet: a tall box
        _box(semantic, rgb, (x0, y0, 1), (x0 + sx, y0 + sy, 1 + sz), label, colour)


def sample_scene(resolution: int, scene_class: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One indoor-like scene: RGB (W, L, H, 3), alpha (W, L, H) and voxel labels (W, L, H) uint8.

    The longest side is `resolution`; the room is not cubic (L varies, H is half of it). A floor,
    two walls and the furniture of its class: a bed (bedroom), a table with chairs (dining room)
    or several cabinets (storage room), with a few extra pieces. Empty space has noise colours
    (meaningless, as in a real NeRF) and alpha ~0.
    """
    w = resolution
    length = int(rng.integers(max(4, round(0.6 * resolution)), resolution + 1))
    h = max(6, round(0.5 * resolution))
    semantic = np.zeros((w, length, h), np.uint8)
    rgb = rng.uniform(0.0, 1.0, (w, length, h, 3))  # what a NeRF holds where nothing is
    _box(semantic, rgb, (0, 0, 0), (w, length, 1), 1, _colour(1, rng))
    _box(semantic, rgb, (0, 0, 1), (1, length, h), 2, _colour(2, rng))
    _box(semantic, rgb, (0, 0, 1), (w, 1, h), 2, _colour(2, rng))
    pieces = {0: ["bed", "cabinet"], 1: ["table", "chair", "chair", "chair"], 2: ["cabinet", "cabinet", "cabinet"]}
    kinds = list(pieces[scene_class])
    if rng.random() < 0.5:
        kinds.append(str(rng.choice(["chair", "cabinet", "table"])))
    for kind in kinds:
        _furniture(kind, semantic, rgb, rng)
    occupied = semantic > 0
    rgb = np.where(occupied[..., None], np.clip(rgb + rng.normal(0, 0.02, rgb.shape), 0, 1), rgb)
    alpha = np.where(occupied, rng.uniform(0.97, OCCUPIED_ALPHA, occupied.shape), rng.uniform(0, 0.002, occupied.shape))
    return rgb.astype(np.float32), alpha.astype(np.float32), semantic


def make_nerf_dataset(out: str | Path, scenes: int = 12, resolution: int = 32, density: DensityMode = "instant_ngp",
                      seed: int = 0) -> Path:
    """Write `scenes` seeded sample scenes as `scene_XXX.npz` grids (with `semantic` voxel labels
    and a `scene_class`) plus `classes.json` under `out`; returns `out`."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for i in progress(range(scenes), desc="scenes", unit="scene"):
        scene_class = i % len(SCENE_CLASSES)
        rgb, alpha, semantic = sample_scene(resolution, scene_class, rng)
        sigma = alpha_to_density(alpha, density)
        if density != "instant_ngp":  # exactly empty where it can be
            sigma = np.where(alpha < 0.0021, 0.0, sigma).astype(np.float32)
        rgbsigma = np.concatenate([rgb, sigma[..., None]], -1)
        write_nerf_grid(out / f"scene_{i:03d}.npz", rgbsigma, semantic=semantic,
                        scene_class=np.asarray(scene_class, np.int64))
    write_text_atomic(out / "classes.json", json.dumps({"scene_classes": SCENE_CLASSES,
                                                        "semantic_classes": SEMANTIC_CLASSES, "density": density},
                                                       indent=1))
    return out


# --------------------------------------------------------------------- meshes and point clouds
def _open3d() -> Any:
    """open3d, imported on first use (one place for the import advice and the log level)."""
    from maekit.domains.pointcloud.readers import open3d_module

    return open3d_module()


def read_coloured_points(path: str | Path,
                         points_per_area: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, 3) points and (N, 3) colours in [0, 1] (None if the file has none) from a mesh (sampled
    uniformly on its surface, colours interpolated from vertex colours) or a point cloud."""
    o3d = _open3d()
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "does not exist")
    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) > 0:
        count = int(np.clip((points_per_area or 0) * mesh.get_surface_area(), 20_000, 20_000_000))
        cloud = mesh.sample_points_uniformly(number_of_points=count)
        colours = np.asarray(cloud.colors) if mesh.has_vertex_colors() else None
        return np.asarray(cloud.points), colours
    cloud = o3d.io.read_point_cloud(str(path))
    if len(cloud.points) == 0:
        raise DataError(path, "cannot be read as a mesh or point cloud by open3d, or holds no points")
    return np.asarray(cloud.points), (np.asarray(cloud.colors) if cloud.has_colors() else None)


def points_to_grid(points: np.ndarray, colours: np.ndarray | None, resolution: int = 160,
                   density: DensityMode = "instant_ngp", dilate: int = 0,
                   source: str | Path = "points") -> dict[str, np.ndarray]:
    """Voxelise coloured points: the longest side of their bounding box gets `resolution` voxels;
    a voxel holding points is occupied (alpha ~1 in the `density` convention, RGB the mean colour
    of its points), others empty (alpha ~0, RGB 0). `dilate` grows the occupied set by that many
    voxels (colours from the occupied neighbours), for thin or sparse surfaces.

    The density written, per convention: `instant_ngp` sigma 6.898 occupied (alpha 0.99995) and
    -10 empty (alpha 4.5e-7); `relu` 990.3 and 0; `alpha` 0.99995 and 0.

    Returns `rgbsigma` (W, L, H, 4), `bbox_min` (3,) and `voxel_size` (world units).
    """
    from scipy import ndimage

    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise DataError(source, f"needs (N, 3) points, got {pts.shape}")
    if not np.isfinite(pts).all():
        raise DataError(source, f"contains {int((~np.isfinite(pts)).any(1).sum())} points with NaN/inf coordinates")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    lo, hi = pts.min(0), pts.max(0)
    extent = hi - lo
    voxel = float(extent.max()) / resolution
    if voxel <= 0:
        raise DataError(source, "all points coincide; there is nothing to voxelise")
    dims = np.clip(np.ceil(extent / voxel - 1e-9).astype(int), 1, resolution)
    idx = np.minimum(np.floor((pts - lo) / voxel).astype(int), dims - 1)
    flat = np.ravel_multi_index(idx.T, dims)
    size = int(np.prod(dims))
    counts = np.bincount(flat, minlength=size).astype(np.float64)
    cols = np.full((len(pts), 3), 0.5) if colours is None else np.clip(np.asarray(colours, np.float64), 0, 1)
    sums = np.stack([np.bincount(flat, weights=cols[:, c], minlength=size) for c in range(3)], -1)
    occupied = (counts > 0).reshape(dims)
    sums, counts = sums.reshape(*dims, 3), counts.reshape(dims)
    for _ in range(max(0, dilate)):  # colours of new voxels: mean over their occupied neighbours
        grown = ndimage.binary_dilation(occupied, structure=np.ones((3, 3, 3), bool))
        weight = ndimage.uniform_filter(occupied.astype(np.float64), size=3, mode="constant")
        colour = np.where(occupied[..., None], sums / np.maximum(counts, 1)[..., None], 0.0)
        mean = np.stack([ndimage.uniform_filter(colour[..., c], size=3, mode="constant") for c in range(3)], -1)
        mean = mean / np.maximum(weight, 1e-9)[..., None]
        new = grown & ~occupied
        sums = np.where(new[..., None], mean, sums)
        counts = np.where(new, 1.0, counts)
        occupied = grown
    rgb = np.where(occupied[..., None], sums / np.maximum(counts, 1)[..., None], 0.0)
    solid = float(alpha_to_density(np.asarray(OCCUPIED_ALPHA), density))
    sigma = np.where(occupied, solid, _empty_density(density))
    rgbsigma = np.concatenate([rgb, sigma[..., None]], -1).astype(np.float32)
    return {"rgbsigma": rgbsigma, "bbox_min": lo.astype(np.float64), "voxel_size": np.asarray(voxel)}


def _to_z_up(points: np.ndarray, up: Literal["z", "y"]) -> np.ndarray:
    """Rotate y-up coordinates so z is up (a rotation about x: (x, y, z) -> (x, -z, y))."""
    if up == "z":
        return points
    return np.stack([points[:, 0], -points[:, 2], points[:, 1]], 1)


def mesh_to_grid(path: str | Path, out: str | Path | None = None, resolution: int = 160,
                 density: DensityMode = "instant_ngp", dilate: int = 0, up: Literal["z", "y"] = "z",
                 points_per_voxel: float = 16.0) -> dict[str, np.ndarray]:
    """Turn a coloured mesh or point cloud (anything open3d reads: PLY, OBJ, OFF, STL, PCD...) into
    an RGB + density grid (see `points_to_grid`), written to `out` as a NeRF grid `.npz` if given.

    A mesh is sampled with about `points_per_voxel` points per voxel-face of surface; colours come
    from its vertex colours (grey 0.5, with a warning, when it has none).
    """
    path = Path(path)
    o3d = _open3d()
    mesh = o3d.io.read_triangle_mesh(str(path)) if path.is_file() else None
    per_area = None
    if mesh is not None and len(mesh.triangles) > 0:
        extent = float(np.max(mesh.get_max_bound() - mesh.get_min_bound()))
        per_area = points_per_voxel * (resolution / max(extent, 1e-12)) ** 2
    points, colours = read_coloured_points(path, per_area)
    if colours is None:
        warnings.warn(f"{path}: has no colours; the grid gets grey (0.5) where it is occupied", stacklevel=2)
    grid = points_to_grid(_to_z_up(points, up), colours, resolution, density, dilate, source=path)
    if out is not None:
        write_nerf_grid(out, grid["rgbsigma"], bbox_min=grid["bbox_min"], voxel_size=grid["voxel_size"])
    return grid


def cmd_nerf_grid(argv: list[str]) -> int:
    """Voxelise coloured meshes or point clouds into NeRF grid .npz files (RGB + density) for
    pretraining: one file, or every matching file under a folder."""
    p = argparse.ArgumentParser(prog="maekit nerf-grid", description=cmd_nerf_grid.__doc__)
    p.add_argument("input", help="a mesh / point cloud file, or a folder of them")
    p.add_argument("out", help="the .npz to write (a folder when input is a folder)")
    p.add_argument("--resolution", type=int, default=160, help="voxels along the longest side (NeRF-MAE: 160)")
    p.add_argument("--density", choices=["instant_ngp", "relu", "alpha"], default="instant_ngp",
                   help="the density convention to write (read the grids back with the same --data.density)")
    p.add_argument("--dilate", type=int, default=0, help="grow occupied voxels by this many voxels")
    p.add_argument("--up", choices=["z", "y"], default="z", help="the vertical axis of the input (ScanNet: z)")
    p.add_argument("--pattern", default="*.ply", help="file pattern when input is a folder (searched recursively)")
    a = p.parse_args(argv)
    source, target = Path(a.input), Path(a.out)
    if source.is_dir():
        files = sorted(f for f in source.rglob(a.pattern) if f.is_file())
        if not files:
            raise DataError(source, f"holds no files matching {a.pattern}")
        jobs = [(f, target / f.relative_to(source).with_suffix(".npz")) for f in files]
    else:
        jobs = [(source, target if target.suffix == ".npz" else target.with_suffix(".npz"))]
    for src, dst in progress(jobs, desc="grids", unit="file"):
        grid = mesh_to_grid(src, dst, a.resolution, a.density, a.dilate, a.up)
        shape = grid["rgbsigma"].shape[:3]
        occupied = float(np.mean(grid["rgbsigma"][..., 3] > _empty_density(a.density)))
        say(f"{src} -> {dst}: grid {shape[0]}x{shape[1]}x{shape[2]}, {100 * occupied:.1f}% occupied, "
              f"voxel {float(grid['voxel_size']):.4g}")
    return 0


def sample_data(out: Path, preset: str, options: SampleOptions) -> Path:
    """`maekit sample-data --preset nerf`: NeRF-MAE radiance grids (12 scenes, longest side 32)."""
    return make_nerf_dataset(out, 12 if options.per_class is None else options.per_class,
                             32 if options.size is None else options.size, seed=options.seed)


def example(root: Path) -> Example:
    """Conformance example: four 8^3 grids, 4^3 patches."""
    from maekit.domains.nerf.adapter import NerfAdapter
    from maekit.domains.nerf.datamodule import NerfGridDataModule

    data = make_nerf_dataset(root, scenes=4, resolution=8, seed=0)
    return Example(NerfAdapter(patch_size=4),
                   NerfGridDataModule(str(data), grid_size=[8, 8, 8], batch_size=2, val_fraction=0.25),
                   native=lambda adapter, batch: adapter.prepare(batch))
