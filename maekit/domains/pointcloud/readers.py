"""Point-cloud readers and a LightningDataModule for scans, meshes and the public layouts.

Formats: PLY / PCD / XYZ / PTS scans and OFF / OBJ / STL / PLY meshes through open3d (meshes are
sampled to points), LAS / LAZ through laspy, KITTI / nuScenes lidar `.bin` (float32 rows),
`.npy` arrays (ShapeNet-55), ModelNet40 `.txt` rows (x,y,z,nx,ny,nz) and HDF5 collections
(`data` (N, P, 3) + `label`: ModelNet40 2048, ScanObjectNN).

Layouts (`layout: auto` detects them):
- `folder`: `root/<split>/<class>/<file>` or `root/<class>/<split>/<file>` (ModelNet OFF), or any
  point files below `root` for pretraining;
- `modelnet40`: `modelnet40_normal_resampled` (`modelnet40_shape_names.txt`,
  `modelnet40_{train,test}.txt`, `<class>/<class>_0001.txt`);
- `modelnet40_h5`: `modelnet40_ply_hdf5_2048` (`ply_data_{train,test}*.h5`, `shape_names.txt`);
- `scanobjectnn`: `{training,test}_objectdataset[_augmentedrot_scale75].h5` under `main_split`
  (objects with background) or `main_split_nobg` (objects only);
- `shapenet55`: `train.txt` / `test.txt` lists of `.npy` files in `shapenet_pc/`.

Every cloud is centred on its centroid and scaled into the unit sphere; extra channels
(`r g b`, `nx ny nz`, `intensity`) ride along when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from maekit.errors import ConfigError, DataError
from maekit.lazy import MissingExtraError, lazy_import

SCAN_SUFFIXES = (".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts")
MESH_SUFFIXES = (".off", ".obj", ".stl", ".gltf", ".glb")
POINT_SUFFIXES = SCAN_SUFFIXES + MESH_SUFFIXES + (".las", ".laz", ".bin", ".npy", ".txt")
SCANOBJECTNN_CLASSES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table",
                        "bed", "pillow", "sink", "sofa", "toilet"]
Layout = Literal["auto", "folder", "modelnet40", "modelnet40_h5", "scanobjectnn", "shapenet55"]
Subsample = Literal["random", "fps", "fps_random"]
#: `fps_random` first takes this many times `count` points by FPS (Point-MAE: 1200 for 1024)
FPS_RANDOM_OVERSAMPLE = 1200 / 1024
Augmentation = Literal["scale_translate", "rotate", "jitter", "dropout"]


@dataclass
class PointCloud:
    """One cloud: xyz (N, 3) float64 (georeferenced coordinates keep their centimetres until the
    cloud is centred) and optional per-point channels by name (N,) float32."""

    xyz: np.ndarray
    channels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.xyz)


def open3d_module() -> Any:
    """open3d, imported on first use, with advice when its system libraries are missing."""
    try:
        open3d = lazy_import("open3d", "reading meshes and PLY/PCD scans")
    except MissingExtraError:
        raise
    except ImportError as err:  # installed, but its system libraries are not
        hint = (" (on Debian/Ubuntu: `apt-get install libusb-1.0-0`, which `make install` does)"
                if "libusb" in str(err) else " (`pip install maekit[3d]`)")
        raise ConfigError(f"reading this point format needs open3d, which failed to import: {err}{hint}") from err
    open3d.utility.set_verbosity_level(open3d.utility.VerbosityLevel.Error)  # failures are checked, not printed
    return open3d


def read_points(path: str | Path, mesh_points: int = 8192, sampling: Literal["uniform", "poisson"] = "uniform",
                bin_columns: int = 4, mesh_seed: int | None = None) -> PointCloud:
    """Read one cloud (or sample one from a mesh) and check it: a clear `DataError` for a
    missing, unreadable or empty file, an unknown extension, or NaN/inf coordinates.

    Args:
        mesh_points: points sampled from a mesh's surface.
        sampling: `uniform` (area-weighted) or `poisson` (Poisson-disk, evenly spaced) sampling.
        bin_columns: float32 values per point in `.bin` lidar files (KITTI 4, nuScenes 5).
        mesh_seed: seeds open3d's surface sampler, so a mesh gives the same points for the same seed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in POINT_SUFFIXES:
        raise DataError(path, f"unknown point-cloud extension {suffix!r} (known: {', '.join(POINT_SUFFIXES)})")
    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        if suffix in (".las", ".laz"):
            cloud = _read_las(path)
        elif suffix == ".bin":
            cloud = _read_bin(path, bin_columns)
        elif suffix == ".npy":
            cloud = _from_columns(path, np.load(path, allow_pickle=False))
        elif suffix == ".txt":
            cloud = _read_text(path)
        else:
            cloud = _read_open3d(path, suffix, mesh_points, sampling, mesh_seed)
    except (DataError, MissingExtraError):
        raise
    except Exception as err:  # the libraries raise many types for damaged files
        raise DataError(path, f"cannot be read as a point cloud: {err}") from err
    return check_cloud(path, cloud)


def check_cloud(path: str | Path, cloud: PointCloud) -> PointCloud:
    """The cloud itself if it is usable; a `DataError` naming `path` if it is empty or not finite."""
    if cloud.xyz.ndim != 2 or cloud.xyz.shape[1] != 3 or len(cloud.xyz) == 0:
        raise DataError(path, "is an empty point cloud (no points could be read)")
    bad = ~np.isfinite(cloud.xyz).all(1)
    if bad.any():
        raise DataError(path, f"has {int(bad.sum())} points with NaN or infinite coordinates "
                              f"(first at row {int(np.argmax(bad))})")
    return cloud


def _read_open3d(path: Path, suffix: str, mesh_points: int, sampling: str, mesh_seed: int | None) -> PointCloud:
    o3d = open3d_module()
    if suffix in MESH_SUFFIXES or (suffix == ".ply" and _ply_has_faces(path)):
        mesh = o3d.io.read_triangle_mesh(str(path))
        if len(mesh.triangles) == 0:
            raise DataError(path, "is a mesh file with no triangles (or could not be parsed)")
        mesh.compute_vertex_normals()
        if mesh_seed is not None:
            o3d.utility.random.seed(mesh_seed)
        if sampling == "poisson":
            pcd = mesh.sample_points_poisson_disk(mesh_points)
        else:
            pcd = mesh.sample_points_uniformly(mesh_points)
        pcd.normalize_normals()  # interpolated vertex normals are not unit length
    else:
        pcd = o3d.io.read_point_cloud(str(path))
    channels: dict[str, np.ndarray] = {}
    if pcd.has_colors():
        channels.update(zip("rgb", np.asarray(pcd.colors, dtype=np.float32).T))
    if pcd.has_normals():
        channels.update(zip(("nx", "ny", "nz"), np.asarray(pcd.normals, dtype=np.float32).T))
    return PointCloud(np.asarray(pcd.points, dtype=np.float64), channels)


def _ply_has_faces(path: Path) -> bool:
    """Whether a PLY header declares at least one face (a mesh rather than a scan)."""
    with open(path, "rb") as f:
        header = f.read(4096).split(b"end_header")[0]
    for line in header.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == b"element" and words[1] == b"face":
            return int(words[2]) > 0
    return False


def _read_las(path: Path) -> PointCloud:
    laspy = lazy_import("laspy", f"reading {path}")
    las = laspy.read(str(path))
    xyz = np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], 1).astype(np.float64)
    channels = {"intensity": np.asarray(las.intensity, dtype=np.float32) / 65535.0}
    if hasattr(las, "red"):
        rgb = {c: np.asarray(getattr(las, n), dtype=np.float32) for c, n in zip("rgb", ("red", "green", "blue"))}
        # the format says 16 bits, but many writers store 8-bit colours in those fields
        full = 255.0 if max(float(v.max(initial=0)) for v in rgb.values()) <= 255 else 65535.0
        channels.update({c: v / full for c, v in rgb.items()})
    return PointCloud(xyz, channels)


def _read_bin(path: Path, columns: int) -> PointCloud:
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % columns:
        raise DataError(path, f"holds {raw.size} float32 values, not a whole number of {columns}-value points "
                              "(truncated, or set `bin_columns`: KITTI 4, nuScenes 5)")
    rows = raw.reshape(-1, columns)
    channels = {"intensity": rows[:, 3].copy()} if columns > 3 else {}
    return PointCloud(rows[:, :3].copy(), channels)


def _read_text(path: Path) -> PointCloud:
    text = path.read_text()
    rows = np.loadtxt(text.replace(",", " ").splitlines(), dtype=np.float64, ndmin=2)
    return _from_columns(path, rows)


def _from_columns(path: Path, rows: np.ndarray) -> PointCloud:
    """xyz from the first 3 columns, then what the next 3 are: unit vectors are normals
    (ModelNet), values in [0, 1] or [0, 255] are colours (x y z r g b exports); anything else is
    refused rather than guessed."""
    if rows.ndim != 2 or rows.shape[1] < 3:
        raise DataError(path, f"holds an array of shape {rows.shape}; expected (points, 3 or more)")
    xyz = rows[:, :3].astype(np.float64)
    channels: dict[str, np.ndarray] = {}
    if rows.shape[1] >= 6:
        extra = rows[:, 3:6].astype(np.float64)
        finite = extra[np.isfinite(extra).all(1)]
        lengths = np.sqrt((finite**2).sum(1))
        if len(finite) and (np.abs(lengths - 1) < 0.05).mean() > 0.95:
            channels.update(zip(("nx", "ny", "nz"), extra.astype(np.float32).T))
        elif len(finite) and finite.min() >= 0 and finite.max() <= 255:
            scale = 1.0 if finite.max() <= 1 else 255.0
            channels.update(zip("rgb", (extra / scale).astype(np.float32).T))
        else:
            raise DataError(path, f"has {rows.shape[1]} columns whose 4th-6th are neither unit normals nor "
                                  "colours in [0, 1] / [0, 255]; keep x y z only or convert the file")
    return PointCloud(xyz, channels)


def normalise_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point lies on the unit sphere (in float64:
    georeferenced coordinates lose centimetres in float32 before centring)."""
    xyz = xyz.astype(np.float64)
    centred = xyz - xyz.mean(0, keepdims=True)
    radius = float(np.sqrt((centred**2).sum(1)).max())
    return centred / radius if radius > 0 else centred


# ------------------------------------------------------------------------------ samples
@dataclass(frozen=True)
class PointSource:
    """Where one sample lives: a file, or a row of an HDF5 collection."""

    path: Path
    row: int | None = None


def detect_layout(root: Path) -> str:
    """The layout of a dataset folder (see the module docstring)."""
    if (root / "modelnet40_shape_names.txt").is_file() or list(root.glob("modelnet*_shape_names.txt")):
        return "modelnet40"
    if list(root.rglob("*objectdataset*.h5")):
        return "scanobjectnn"
    if list(root.glob("*.h5")):
        return "modelnet40_h5"
    if (root / "train.txt").is_file() and (root / "shapenet_pc").is_dir():
        return "shapenet55"
    return "folder"


def find_point_samples(root: str | Path, layout: Layout = "auto", split: str = "train",
                       variant: Literal["hardest", "obj_bg", "obj_only"] = "hardest"
                       ) -> tuple[list[PointSource], list[int] | None, list[str]]:
    """(sources, labels or None, class names) of one split of a dataset folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    layout = detect_layout(root) if layout == "auto" else layout
    finder = {"folder": _find_folder, "modelnet40": _find_modelnet_text, "modelnet40_h5": _find_modelnet_h5,
              "scanobjectnn": lambda r, s: _find_scanobjectnn(r, s, variant), "shapenet55": _find_shapenet}[layout]
    sources, labels, classes = finder(root, split)
    if not sources:
        raise DataError(root, f"has no {split} samples in the {layout} layout")
    return sources, labels, classes


_SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "test"),
                "test": ("test", "val")}


def _point_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in POINT_SUFFIXES)


def _find_folder(root: Path, split: str) -> tuple[list[PointSource], list[int] | None, list[str]]:
    for name in _SPLIT_NAMES[split]:
        if (root / name).is_dir():  # root/<split>/<class>/file
            base = root / name
            classes = sorted(d.name for d in base.iterdir() if d.is_dir())
            if not classes:  # an unlabelled split
                return [PointSource(p) for p in _point_files(base)], None, []
            files = [(p, i) for i, c in enumerate(classes) for p in _point_files(base / c)]
            return [PointSource(p) for p, _ in files], [i for _, i in files], classes
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    per_class = [[d for d in (root / c).iterdir() if d.is_dir() and d.name in _SPLIT_NAMES[split]] for c in classes]
    if classes and all(per_class):  # root/<class>/<split>/file (ModelNet meshes)
        files = [(p, i) for i, dirs in enumerate(per_class) for p in _point_files(dirs[0])]
        return [PointSource(p) for p, _ in files], [i for _, i in files], classes
    if split == "train":  # unlabelled: every point file
        return [PointSource(p) for p in _point_files(root)], None, []
    return [], None, []


def _find_modelnet_text(root: Path, split: str) -> tuple[list[PointSource], list[int], list[str]]:
    names_file = next(iter(sorted(root.glob("modelnet*_shape_names.txt"))))
    prefix = names_file.name.removesuffix("_shape_names.txt")
    classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    list_file = root / f"{prefix}_{'train' if split == 'train' else 'test'}.txt"
    if not list_file.is_file():
        raise DataError(list_file, "is missing (the ModelNet split list)")
    sources, labels = [], []
    for shape_id in (line.strip() for line in list_file.read_text().splitlines()):
        if not shape_id:
            continue
        cls = shape_id.rsplit("_", 1)[0]
        if cls not in classes:
            raise DataError(list_file, f"names {shape_id!r}, whose class {cls!r} is not in {names_file.name}")
        sources.append(PointSource(root / cls / f"{shape_id}.txt"))
        labels.append(classes.index(cls))
    return sources, labels, classes


def _h5_rows(files: list[Path]) -> tuple[list[PointSource], list[int]]:
    h5py = lazy_import("h5py", "HDF5 point-cloud layouts")

    sources, labels = [], []
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                if "data" not in f or "label" not in f:
                    raise DataError(path, f"has no 'data' and 'label' datasets (it has {sorted(f.keys())})")
                data_shape, label = f["data"].shape, np.asarray(f["label"]).reshape(-1)
        except DataError:
            raise
        except Exception as err:
            raise DataError(path, f"cannot be read as HDF5: {err}") from err
        if len(data_shape) != 3 or data_shape[2] < 3 or data_shape[0] != len(label):
            raise DataError(path, f"'data' has shape {data_shape} with {len(label)} labels; expected (N, points, 3)")
        sources += [PointSource(path, i) for i in range(data_shape[0])]
        labels += label.astype(int).tolist()
    return sources, labels


def _find_modelnet_h5(root: Path, split: str) -> tuple[list[PointSource], list[int], list[str]]:
    key = "train" if split == "train" else "test"
    files = sorted(p for p in root.glob("*.h5") if key in p.name)
    sources, labels = _h5_rows(files)
    names = root / "shape_names.txt"
    classes = ([n.strip() for n in names.read_text().splitlines() if n.strip()] if names.is_file()
               else [str(i) for i in range(max(labels, default=-1) + 1)])
    return sources, labels, classes


def _find_scanobjectnn(root: Path, split: str, variant: str) -> tuple[list[PointSource], list[int], list[str]]:
    folder = "main_split_nobg" if variant == "obj_only" else "main_split"
    suffix = "_augmentedrot_scale75" if variant == "hardest" else ""
    name = f"{'training' if split == 'train' else 'test'}_objectdataset{suffix}.h5"
    candidates = [p for p in root.rglob(name) if p.parent.name == folder] or list(root.rglob(name))
    if not candidates:
        raise DataError(root, f"has no {folder}/{name} (ScanObjectNN variant {variant})")
    sources, labels = _h5_rows(sorted(candidates)[:1])
    classes = SCANOBJECTNN_CLASSES if max(labels) < 15 else [str(i) for i in range(max(labels) + 1)]
    return sources, labels, classes


def _find_shapenet(root: Path, split: str) -> tuple[list[PointSource], list[int], list[str]]:
    names = [n.strip() for n in (root / f"{'train' if split == 'train' else 'test'}.txt").read_text().splitlines()
             if n.strip()]
    classes = sorted({n.split("-")[0] for n in names})
    return ([PointSource(root / "shapenet_pc" / n) for n in names], [classes.index(n.split("-")[0]) for n in names],
            classes)


# --------------------------------------------------------------------------- datamodule
