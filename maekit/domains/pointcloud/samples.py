"""A seeded ModelNet-like sample dataset: shape classes built from open3d primitives, deformed,
coloured, sometimes seen as partial scans, written as real PLY / OFF files in the
class-per-folder layout or as `.txt` clouds in the ModelNet40 `normal_resampled` layout."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from maekit.lazy import lazy_import
from maekit.domains.pointcloud.readers import open3d_module
from maekit.files import atomic_output, write_text_atomic
from maekit.domains.registry import Example, SampleOptions
from maekit.progress import progress

SHAPE_CLASSES = ("box", "sphere", "cylinder", "cone", "torus", "table")
_COLOURS = {"box": (0.8, 0.5, 0.2), "sphere": (0.2, 0.6, 0.8), "cylinder": (0.3, 0.7, 0.3),
            "cone": (0.8, 0.2, 0.3), "torus": (0.6, 0.3, 0.7), "table": (0.5, 0.4, 0.3)}


def shape_mesh(kind: str, rng: np.random.Generator) -> Any:
    """One deformed, coloured open3d mesh of class `kind`, y up, roughly unit size."""
    o3d = open3d_module()
    tm = o3d.geometry.TriangleMesh
    up = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)  # open3d's z axis -> y
    if kind == "box":
        mesh = tm.create_box(*rng.uniform(0.6, 1.4, 3)).subdivide_midpoint(3)
    elif kind == "sphere":
        mesh = tm.create_sphere(radius=rng.uniform(0.6, 1.0), resolution=16)
    elif kind == "cylinder":
        mesh = tm.create_cylinder(radius=rng.uniform(0.3, 0.6), height=rng.uniform(1.2, 2.0), resolution=24,
                                  split=4).rotate(up, center=(0, 0, 0))
    elif kind == "cone":
        mesh = tm.create_cone(radius=rng.uniform(0.5, 0.8), height=rng.uniform(1.0, 1.8), resolution=24,
                              split=4).rotate(up, center=(0, 0, 0))
    elif kind == "torus":
        mesh = tm.create_torus(torus_radius=rng.uniform(0.7, 1.0), tube_radius=rng.uniform(0.15, 0.35),
                               radial_resolution=24, tubular_resolution=12)
    elif kind == "table":
        width, depth, height = rng.uniform(1.2, 2.0), rng.uniform(0.8, 1.2), rng.uniform(0.7, 1.1)
        mesh = tm.create_box(width, 0.08, depth).translate((0, height, 0)).subdivide_midpoint(2)
        leg = rng.uniform(0.05, 0.1)
        for x in (0.05, width - 0.05 - leg):
            for z in (0.05, depth - 0.05 - leg):
                mesh += tm.create_box(leg, height, leg).translate((x, 0, z)).subdivide_midpoint(2)
    else:
        raise ValueError(f"unknown shape class {kind!r} (known: {', '.join(SHAPE_CLASSES)})")
    mesh.translate(-mesh.get_center())
    # smooth random bumps along the normals, a random stretch and a turn about the up axis
    mesh.compute_vertex_normals()
    vertices = np.asarray(mesh.vertices)
    normals = np.asarray(mesh.vertex_normals)
    freq, phase = rng.uniform(1.5, 4.0, 3), rng.uniform(0, 2 * math.pi, 3)
    bump = 0.05 * np.sin(vertices * freq + phase).sum(1, keepdims=True)
    vertices = (vertices + bump * normals) * rng.uniform(0.8, 1.2, 3)
    angle = rng.uniform(0, 2 * math.pi)
    turn = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    mesh.vertices = o3d.utility.Vector3dVector(vertices @ turn.T)
    colour = np.clip(np.asarray(_COLOURS[kind]) + rng.normal(0, 0.08, (len(vertices), 3)), 0, 1)
    mesh.vertex_colors = o3d.utility.Vector3dVector(colour)
    mesh.compute_vertex_normals()
    return mesh


def sample_surface(mesh: Any, rng: np.random.Generator, points: int) -> Any:
    """`points` uniform samples of a mesh's surface, with open3d's sampler seeded from `rng`."""
    open3d_module().utility.random.seed(int(rng.integers(2**31 - 1)))
    return mesh.sample_points_uniformly(points)


def partial_scan(mesh: Any, rng: np.random.Generator, points: int = 2048) -> Any:
    """Exactly `points` points of the surface a sensor sees from one random direction, with sensor noise.

    The mesh is sampled in rounds until enough points face the sensor, so a narrow view of a
    shape still gives a full-size scan.
    """
    view = rng.normal(size=3)
    view /= np.linalg.norm(view)
    rounds: list[Any] = []
    count = 0
    for _ in range(64):
        cloud = sample_surface(mesh, rng, 3 * points)
        seen = np.flatnonzero(np.asarray(cloud.normals) @ view > 0.0)
        rounds.append(cloud.select_by_index(seen.tolist()))
        count += len(seen)
        if count >= points:
            break
    else:
        raise ValueError(f"only {count} of the mesh's sampled points face the view {view}; is the mesh flat?")
    scan = rounds[0]
    for more in rounds[1:]:
        scan += more
    scan = scan.select_by_index(list(range(points)))
    xyz = np.asarray(scan.points)
    scan.points = type(scan.points)(xyz + rng.normal(0, 0.005, xyz.shape))
    return scan


def make_pointcloud_dataset(out: str | Path, layout: Literal["folder", "modelnet40"] = "folder",
                            classes: tuple[str, ...] = SHAPE_CLASSES, per_class: int = 10, test_per_class: int = 4,
                            partial_fraction: float = 0.3, points: int = 2048, seed: int = 0) -> Path:
    """Write the sample dataset below `out` and return it.

    `folder`: `out/{train,test}/<class>/<class>_NNNN.{ply,off}` meshes (PLY with vertex colours,
    OFF without) and `..._scan.ply` partial scans (point clouds, a `partial_fraction` of samples).
    `modelnet40`: `modelnet40_normal_resampled`-style `out/<class>/<class>_NNNN.txt` with
    `points` rows of x,y,z,nx,ny,nz, plus the shape-name and split lists.
    """
    o3d = open3d_module()
    out = Path(out)
    rng = np.random.default_rng(seed)
    names: dict[str, list[str]] = {"train": [], "test": []}
    for kind in progress(classes, desc="classes", unit="class"):
        for i in range(per_class + test_per_class):
            split = "train" if i < per_class else "test"
            mesh = shape_mesh(kind, rng)
            stem = f"{kind}_{i + 1:04d}"
            if layout == "modelnet40":
                cloud = sample_surface(mesh, rng, points) if rng.random() >= partial_fraction else \
                    partial_scan(mesh, rng, points)
                cloud.normalize_normals()
                rows = np.concatenate([np.asarray(cloud.points), np.asarray(cloud.normals)], 1)[:points]
                text = "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n"
                write_text_atomic(out / kind / f"{stem}.txt", text)
                names[split].append(stem)
                continue
            folder = out / split / kind
            if rng.random() < partial_fraction:
                with atomic_output(folder / f"{stem}_scan.ply") as tmp:
                    if not o3d.io.write_point_cloud(str(tmp), partial_scan(mesh, rng, points)):
                        raise OSError(f"open3d could not write {tmp}")
            else:
                suffix = ".ply" if i % 2 == 0 else ".off"
                with atomic_output(folder / f"{stem}{suffix}") as tmp:
                    if not o3d.io.write_triangle_mesh(str(tmp), mesh, write_vertex_normals=False):
                        raise OSError(f"open3d could not write {tmp}")
    if layout == "modelnet40":
        write_text_atomic(out / "modelnet40_shape_names.txt", "\n".join(classes) + "\n")
        for split, ids in names.items():
            write_text_atomic(out / f"modelnet40_{split}.txt", "\n".join(ids) + "\n")
    return out


def write_h5_collection(path: str | Path, clouds: np.ndarray, labels: np.ndarray) -> Path:
    """An HDF5 file in the ModelNet40-2048 / ScanObjectNN form: `data` (N, P, 3), `label` (N, 1)."""
    h5py = lazy_import("h5py", "HDF5 point-cloud layouts")

    path = Path(path)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("data", data=clouds.astype(np.float32))
            f.create_dataset("label", data=labels.astype(np.uint8).reshape(-1, 1))
    return path


def sample_data(out: Path, preset: str, options: SampleOptions) -> Path:
    """`maekit sample-data --preset pointcloud|modelnet40`: class folders of meshes and scans, or
    the ModelNet40 text layout (20 clouds per class, 2048 points)."""
    return make_pointcloud_dataset(out, "folder" if preset == "pointcloud" else "modelnet40",
                                   per_class=20 if options.per_class is None else options.per_class,
                                   test_per_class=min(options.val_per_class, 8),
                                   points=2048 if options.size is None else options.size, seed=options.seed)


def example(root: Path) -> Example:
    """Conformance example: ModelNet40-layout clouds (text rows, no open3d needed), 8 groups of 8."""
    from maekit.domains.pointcloud.adapter import PointCloudAdapter
    from maekit.domains.pointcloud.datamodule import PointCloudDataModule

    data = make_pointcloud_dataset(root, "modelnet40", classes=SHAPE_CLASSES[:2], per_class=2, test_per_class=1,
                                   points=256, seed=0)
    return Example(PointCloudAdapter(groups=8, group_size=8),
                   PointCloudDataModule(str(data), num_points=64, batch_size=2), native=_grouped_points)


def _grouped_points(adapter: Any, batch: dict[str, Any]) -> Any:
    """The points of every token's group (centre + offsets), which untokenize returns."""
    from maekit.domains.pointcloud.ops import group_points

    hoods, centres = group_points(batch["points"].float(), adapter.groups, adapter.group_size)
    return (hoods[..., :3] + centres[:, :, None]).flatten(1, 2)
