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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from maekit.datasets.resumable import ResumableLoader, training_loader
from maekit.errors import ConfigError, DataError

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
        import open3d
    except ImportError as err:
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
    except DataError:
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
    try:
        import laspy
    except ImportError as err:
        raise ConfigError(f"{path}: reading LAS/LAZ needs laspy (`pip install maekit[lidar]`)") from err
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


class PointCloudDataset(Dataset):
    """Clouds as dicts: `points` (num_points, 3 + C) float32, `label` (when labelled), `path`.

    Args:
        sources: the samples.
        num_points: points per sample; larger clouds are subsampled (`subsample`: see
            `choose_points`), smaller ones are refused unless `resample_small`.
        channels: extra per-point channels to deliver, by name.
        labels: class index per source.
        augment: training augmentations (Point-MAE: scale_translate).
        min_points: the fewest points a cloud may have even with `resample_small`.
        up_axis: the axis rotations turn about.
    """

    def __init__(self, sources: Sequence[PointSource], num_points: int = 1024, channels: Sequence[str] = (),
                 labels: Sequence[int] | None = None, augment: Sequence[Augmentation] = (),
                 subsample: Subsample = "random", resample_small: bool = False,
                 min_points: int = 1, up_axis: Literal["x", "y", "z"] = "y", mesh_points: int = 8192,
                 bin_columns: int = 4, mesh_sampling: Literal["uniform", "poisson"] = "uniform") -> None:
        self.sources, self.labels = list(sources), labels
        self.num_points, self.channels = num_points, list(channels)
        self.augment, self.subsample = list(augment), subsample
        self.resample_small, self.min_points = resample_small, min_points
        self.up = "xyz".index(up_axis)
        self.mesh_points, self.bin_columns, self.mesh_sampling = mesh_points, bin_columns, mesh_sampling
        self._h5: dict[Path, Any] = {}
        names = self.channels
        at = names.index("nx") if "nx" in names else -1
        self._normals_column = 3 + at if at >= 0 and names[at:at + 3] == ["nx", "ny", "nz"] else None

    def __len__(self) -> int:
        return len(self.sources)

    def load(self, source: PointSource) -> PointCloud:
        """The raw cloud of one source (checked, not normalised). A mesh is sampled with a seed
        drawn from torch's generator, so a seeded loader gives the same points on every run."""
        if source.row is None:
            mesh_seed = int(torch.randint(2**31 - 1, ()))
            return read_points(source.path, self.mesh_points, self.mesh_sampling, self.bin_columns, mesh_seed)
        handle = self._h5.get(source.path)
        if handle is None:  # one open handle per file and worker
            import h5py

            handle = self._h5[source.path] = h5py.File(source.path, "r")
        rows = np.asarray(handle["data"][source.row], dtype=np.float32)
        cloud = _from_columns(source.path, rows)
        if "normal" in handle:
            cloud.channels.update(zip(("nx", "ny", "nz"), np.asarray(handle["normal"][source.row], np.float32).T))
        return check_cloud(f"{source.path}[{source.row}]", cloud)

    def __getitem__(self, index: int) -> dict[str, Any]:
        points, where = self.all_points(index)
        points = torch.from_numpy(self.resize(points, where))
        if self.augment:
            points = augment_points(points, self.augment, self.up, self._normals_column)
        item: dict[str, Any] = {"points": points, "path": where}
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[index], dtype=torch.long)
        return item

    def all_points(self, index: int) -> tuple[np.ndarray, str]:
        """Every point of sample `index` as (P, 3 + C) float32 in the unit sphere, and where it is from."""
        source = self.sources[index]
        where = f"{source.path}[{source.row}]" if source.row is not None else str(source.path)
        cloud = self.load(source)
        missing = [c for c in self.channels if c not in cloud.channels]
        if missing:
            raise DataError(where, f"has no {', '.join(missing)} channel(s) (it has {sorted(cloud.channels) or 'none'})")
        xyz = normalise_unit_sphere(cloud.xyz).astype(np.float32)  # centred in float64 first
        return np.concatenate([xyz] + [cloud.channels[c][:, None] for c in self.channels], 1).astype(np.float32), where

    def resize(self, points: np.ndarray, where: str) -> np.ndarray:
        """Exactly `num_points` of `points`: subsampled (`subsample`), or repeated if allowed."""
        count = len(points)
        if count == self.num_points:
            return points
        if count < self.num_points:
            if not self.resample_small or count < self.min_points:
                need = self.num_points if not self.resample_small else self.min_points
                raise DataError(where, f"has {count} points, fewer than the {need} needed (num_points "
                                       f"{self.num_points}; the model needs at least {self.min_points}: one per "
                                       "group centre and a full neighbourhood); lower `num_points` or set "
                                       "`resample_small: true` to repeat points")
            extra = torch.randint(count, (self.num_points - count,)).numpy()
            return np.concatenate([points, points[extra]], 0)
        return choose_points(points, self.num_points, self.subsample)


def choose_points(points: np.ndarray, count: int, how: Subsample) -> np.ndarray:
    """`count` of the rows of `points` (P >= count, else a `ValueError`).

    `random`: a draw from torch's generator. `fps`: farthest-point sampling on xyz (deterministic,
    in pick order: FPS of all rows reorders them). `fps_random`: Point-MAE's fine-tuning draw, FPS
    to ~1.17 × `count` points, then a random `count` of those (even coverage, still varied).
    """
    if len(points) < count:
        raise ValueError(f"cannot choose {count} points from a cloud of {len(points)}")
    if len(points) == count and how != "fps":
        return points
    if how == "random":
        return points[torch.randperm(len(points))[:count].numpy()]
    from maekit.domains.point_ops import farthest_point_order

    first = count if how == "fps" else min(len(points), round(count * FPS_RANDOM_OVERSAMPLE))
    keep = farthest_point_order(points[:, :3], first)
    if how == "fps_random":
        keep = keep[torch.randperm(first)[:count].numpy()]
    return points[keep]


def augment_points(points: Tensor, kinds: Sequence[str], up: int = 1, normals: int | None = None) -> Tensor:
    """Training augmentations of one cloud (P, 3 + C), drawing from torch's seeded generator:
    `scale_translate` (per-axis scale in [2/3, 3/2], shift in [-0.2, 0.2], Point-MAE), `rotate`
    (about the up axis; normals turn too), `jitter` (Gaussian, sigma 0.01 clipped at 0.05) and
    `dropout` (up to 87.5 % of points replaced by the first point, PointNet++). `normals` is the
    column where nx, ny, nz start, if the cloud carries them."""
    xyz = points[:, :3]
    rest = points[:, 3:]
    if "rotate" in kinds:
        angle = torch.rand(()) * 2 * math.pi
        c, s = torch.cos(angle), torch.sin(angle)
        a, b = [i for i in range(3) if i != up]
        rot = torch.eye(3)
        rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
        xyz = xyz @ rot.T
        if normals is not None:
            at = normals - 3
            rest = torch.cat([rest[:, :at], rest[:, at:at + 3] @ rot.T, rest[:, at + 3:]], 1)
    if "scale_translate" in kinds:
        xyz = xyz * torch.empty(3).uniform_(2 / 3, 3 / 2) + torch.empty(3).uniform_(-0.2, 0.2)
    if "jitter" in kinds:
        xyz = xyz + (torch.randn_like(xyz) * 0.01).clamp(-0.05, 0.05)
    out = torch.cat([xyz, rest], 1)
    if "dropout" in kinds:
        ratio = torch.rand(()) * 0.875
        dropped = torch.rand(len(out)) <= ratio
        out = torch.where(dropped[:, None], out[:1], out)
    return out



# ------------------------------------------------------------------------------ layouts
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
    import h5py

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
class PointCloudDataModule(L.LightningDataModule):
    """Point clouds for pretraining or classification, in any layout above.

    Args:
        root: the dataset folder.
        layout: which layout (`auto` detects it).
        task: `pretrain` (labels ignored) or `classification`.
        num_points: points per sample (Point-MAE: 1024 ModelNet, 2048 ScanObjectNN).
        channels: extra per-point channels (e.g. [r, g, b] or [nx, ny, nz]); must match the model.
        augment: training augmentations.
        variant: ScanObjectNN split (`hardest` = PB_T50_RS).
        resample_small: repeat points of clouds smaller than `num_points` instead of refusing them.
        min_points: the fewest points accepted with `resample_small` (the model's groups / group size).
        labels_per_class: keep only this many training samples per class.
        val_fraction: share of an unlabelled folder held out for validation.
        up_axis: the vertical axis (ModelNet / ShapeNet: y; lidar: z).
        mesh_points: points sampled from each mesh.
        mesh_sampling: `uniform` (area-weighted, fast) or `poisson` (Poisson-disk: evenly spaced).
        bin_columns: float32 values per point of `.bin` lidar files.
        train_subsample: how training draws `num_points` from a larger cloud: `random`, or
            `fps_random` (Point-MAE's fine-tuning: FPS to ~1.17 × `num_points`, then a random
            subset). Evaluation always takes the deterministic FPS sample.
        eval_points: points of each validation/test cloud (default `num_points`); more lets a
            classifier's voting draw a fresh subset per vote (Point-MAE: 1200, `vote_points` 1024).
    """

    def __init__(self, root: str, layout: Layout = "auto", task: Literal["pretrain", "classification"] = "pretrain",
                 num_points: int = 1024, channels: list[str] | None = None,
                 augment: list[Augmentation] | None = None, variant: Literal["hardest", "obj_bg", "obj_only"] = "hardest",
                 batch_size: int = 32, num_workers: int = 0, resample_small: bool = False, min_points: int = 64,
                 labels_per_class: int | None = None, val_fraction: float = 0.05,
                 up_axis: Literal["x", "y", "z"] = "y", mesh_points: int = 8192, bin_columns: int = 4,
                 mesh_sampling: Literal["uniform", "poisson"] = "uniform", seed: int = 0,
                 train_subsample: Literal["random", "fps_random"] = "random", eval_points: int | None = None) -> None:
        super().__init__()
        self.train_subsample, self.eval_points = train_subsample, eval_points
        self.root, self.layout, self.task = Path(root), layout, task
        self.num_points, self.channels = num_points, list(channels or [])
        self.augment = list(augment) if augment is not None else ["scale_translate"]
        self.variant, self.batch_size, self.num_workers = variant, batch_size, num_workers
        self.resample_small, self.min_points = resample_small, min_points
        self.labels_per_class, self.val_fraction = labels_per_class, val_fraction
        self.up_axis, self.mesh_points, self.bin_columns, self.seed = up_axis, mesh_points, bin_columns, seed
        self.mesh_sampling = mesh_sampling
        self.classes: list[str] = []
        self.datasets: dict[str, PointCloudDataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _dataset(self, sources: list[PointSource], labels: list[int] | None, train: bool) -> PointCloudDataset:
        return PointCloudDataset(sources, self.num_points if train else self.eval_points or self.num_points,
                                 self.channels,
                                 labels if self.task == "classification" else None,
                                 self.augment if train else (), self.train_subsample if train else "fps",
                                 self.resample_small, self.min_points, self.up_axis, self.mesh_points, self.bin_columns,
                                 self.mesh_sampling)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        train, train_labels, self.classes = find_point_samples(self.root, self.layout, "train", self.variant)
        if self.task == "classification" and train_labels is None:
            raise DataError(self.root, "has no class folders, so it cannot be used for classification "
                                       "(expected <split>/<class>/<file> or a public layout)")
        try:
            val, val_labels, _ = find_point_samples(self.root, self.layout, "val", self.variant)
        except DataError:
            val, val_labels = [], None
        rng = np.random.default_rng(self.seed)
        if not val:  # hold out a seeded share
            order = rng.permutation(len(train))
            cut = max(1, int(round(len(train) * self.val_fraction)))
            val_idx, train_idx = order[:cut], order[cut:]
            val, train = [train[i] for i in val_idx], [train[i] for i in train_idx]
            if train_labels is not None:
                val_labels = [train_labels[i] for i in val_idx]
                train_labels = [train_labels[i] for i in train_idx]
        if self.labels_per_class and train_labels is not None:
            keep = [i for c in range(len(self.classes))
                    for i in rng.permutation([j for j, label in enumerate(train_labels) if label == c])[
                        : self.labels_per_class]]
            keep.sort()
            train, train_labels = [train[i] for i in keep], [train_labels[i] for i in keep]
        self.datasets = {"train": self._dataset(train, train_labels, True),
                         "val": self._dataset(val, val_labels, False)}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, drop_last=shuffle and len(self.datasets[split]) > self.batch_size,
                          persistent_workers=self.num_workers > 0, collate_fn=collate_points)

    def train_dataloader(self) -> ResumableLoader:
        train = self.datasets["train"]
        return training_loader(self, train, self.batch_size, self.num_workers, drop_last=len(train) > self.batch_size,
                               collate_fn=collate_points)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("val", False)


def collate_points(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples; paths stay a list."""
    out: dict[str, Any] = {"points": torch.stack([i["points"] for i in items]), "path": [i["path"] for i in items]}
    if "label" in items[0]:
        out["label"] = torch.stack([i["label"] for i in items])
    return out
