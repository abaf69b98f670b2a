"""The point-cloud dataset (subsampling, augmentation), its LightningDataModule and batch collation."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from maekit.lazy import lazy_import
from maekit.data.base import MaekitDataModule
from maekit.errors import ConfigError, DataError
from maekit.domains.pointcloud.readers import (
    Augmentation, FPS_RANDOM_OVERSAMPLE, Layout, PointCloud, PointSource, Subsample, _from_columns, check_cloud,
    find_point_samples, normalise_unit_sphere, read_points)


#: what happens to a cloud with fewer than `num_points` points: `error` refuses it (naming the file,
#: its count and the minimum), `repeat` draws the missing points again with replacement (all of the
#: cloud's points are kept, some twice), for small objects such as DALES's ~100-point ones
ResampleSmall = Literal["error", "repeat"]


def resample_mode(value: ResampleSmall | bool) -> ResampleSmall:
    """`resample_small` as one of its names (True/False, the older spelling, are `repeat`/`error`)."""
    if isinstance(value, bool):
        return "repeat" if value else "error"
    if value not in ("error", "repeat"):
        raise ConfigError(f"resample_small must be 'error' or 'repeat', got {value!r}")
    return value


class PointCloudDataset(Dataset):
    """Clouds as dicts: `points` (num_points, 3 + C) float32, `label` (when labelled), `path`.

    Args:
        sources: the samples.
        num_points: points per sample; larger clouds are subsampled (`subsample`: see
            `choose_points`); smaller ones as `resample_small` says (`ResampleSmall`).
        channels: extra per-point channels to deliver, by name.
        labels: class index per source.
        augment: training augmentations (Point-MAE: scale_translate).
        min_points: the fewest points a cloud may have even with `resample_small: repeat`.
        up_axis: the axis rotations turn about.
    """

    def __init__(self, sources: Sequence[PointSource], num_points: int = 1024, channels: Sequence[str] = (),
                 labels: Sequence[int] | None = None, augment: Sequence[Augmentation] = (),
                 subsample: Subsample = "random", resample_small: ResampleSmall | bool = "error",
                 min_points: int = 1, up_axis: Literal["x", "y", "z"] = "y", mesh_points: int = 8192,
                 bin_columns: int = 4, mesh_sampling: Literal["uniform", "poisson"] = "uniform") -> None:
        self.sources, self.labels = list(sources), labels
        self.num_points, self.channels = num_points, list(channels)
        self.augment, self.subsample = list(augment), subsample
        self.resample_small, self.min_points = resample_mode(resample_small), min_points
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
            h5py = lazy_import("h5py", "HDF5 point-cloud layouts")

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
            if self.resample_small == "error":
                raise DataError(where, f"has {count} points, fewer than the {self.num_points} needed (num_points); "
                                       "lower num_points, or set `resample_small: repeat` to draw the missing "
                                       f"points again (clouds need at least min_points {self.min_points} even then)")
            if count < self.min_points:
                raise DataError(where, f"has {count} points, fewer than the {self.min_points} needed even with "
                                       "`resample_small: repeat` (min_points: the model needs one point per group "
                                       "centre and a full neighbourhood)")
            extra = torch.randint(count, (self.num_points - count,)).numpy()
            return np.concatenate([points, points[extra]], 0)
        return choose_points(points, self.num_points, self.subsample)


    def shard_plan(self, seed: int) -> tuple[Dataset, dict[str, Any]]:
        """Shards store a pool of up to `POINT_POOL` x `num_points` points per cloud in FPS order;
        the draw of `num_points` and the augmentations run at stream time (`FinishPoints`)."""
        return PointPool(self), {
            "kind": "points", "finish": f"{__name__}:FinishPoints", "num_points": self.num_points,
            "subsample": self.subsample, "augment": list(self.augment), "up": self.up,
            "normals": self._normals_column}


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
    from maekit.domains.pointcloud.ops import farthest_point_order

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
class PointCloudDataModule(MaekitDataModule):
    """Point clouds for pretraining or classification, in any layout above.

    Args:
        root: the dataset folder.
        layout: which layout (`auto` detects it).
        task: `pretrain` (labels ignored) or `classification`.
        num_points: points per sample (Point-MAE: 1024 ModelNet, 2048 ScanObjectNN).
        channels: extra per-point channels (e.g. [r, g, b] or [nx, ny, nz]); must match the model.
        augment: training augmentations.
        variant: ScanObjectNN split (`hardest` = PB_T50_RS).
        resample_small: clouds smaller than `num_points`: `error` (the default: refused, naming the
            file, its count and the minimum) or `repeat` (the missing points drawn again, with
            replacement; e.g. DALES's ~100-point objects). True/False still mean repeat/error.
        min_points: the fewest points accepted with `resample_small: repeat` (the model's groups / group size).
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
                 batch_size: int = 32, num_workers: int = 0, resample_small: ResampleSmall | bool = "error",
                 min_points: int = 64,
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
        self.resample_small, self.min_points = resample_mode(resample_small), min_points
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
        if not val:  # hold out a seeded share (at least one sample)
            val_idx, train_idx = self.seeded_split(range(len(train)), self.val_fraction, at_least_one=True)
            val, train = [train[i] for i in val_idx], [train[i] for i in train_idx]
            if train_labels is not None:
                val_labels = [train_labels[i] for i in val_idx]
                train_labels = [train_labels[i] for i in train_idx]
        if self.labels_per_class and train_labels is not None:
            keep = self.per_class_subset(train_labels, self.labels_per_class)
            train, train_labels = [train[i] for i in keep], [train_labels[i] for i in keep]
        self.datasets = {"train": self._dataset(train, train_labels, True),
                         "val": self._dataset(val, val_labels, False)}

    @property
    def collate_fn(self) -> Any:
        """How batches are collated (recorded in shard manifests)."""
        return collate_points


def collate_points(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples; paths stay a list."""
    out: dict[str, Any] = {"points": torch.stack([i["points"] for i in items]), "path": [i["path"] for i in items]}
    if "label" in items[0]:
        out["label"] = torch.stack([i["label"] for i in items])
    return out


#: point clouds keep up to this many times `num_points` points in shards, for per-epoch random subsets
POINT_POOL = 8


class PointPool(Dataset):
    """A pool of up to `POINT_POOL` x `num_points` points per cloud of a `PointCloudDataset`,
    in farthest-point order, so streaming still draws a fresh random subset every epoch (Point-MAE
    draws 1024 of ShapeNet-55's 8192) and its first `num_points` are the source's FPS sample."""

    def __init__(self, source: PointCloudDataset) -> None:
        self.source = copy.copy(source)
        self.source.augment, self.source._h5 = [], {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        points, where = self.source.all_points(index)
        pool = POINT_POOL * self.source.num_points
        if len(points) <= self.source.num_points:
            points = self.source.resize(points, where)  # the source's own refusal or repetition
        else:
            points = choose_points(points, min(pool, len(points)), "fps")
        item: dict[str, Any] = {"points": torch.from_numpy(np.ascontiguousarray(points)), "path": where}
        if self.source.labels is not None:
            item["label"] = torch.tensor(self.source.labels[index], dtype=torch.long)
        return item


class FinishPoints:
    """A stored pool -> the source's draw of `num_points` (FPS prefix, `fps_random` or random)
    and its augmentations."""

    #: how batches of these samples are collated
    collate = f"{__name__}:collate_points"

    def __init__(self, spec: dict[str, Any], augment: bool) -> None:
        self.spec, self.augment = spec, augment

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        spec, points = self.spec, item["points"]
        count = spec.get("num_points", len(points))
        if len(points) > count:  # the pool is in FPS order: any prefix is that many FPS picks
            how = spec.get("subsample", "fps") if self.augment else "fps"
            if how == "fps":
                points = points[:count]
            elif how == "fps_random":  # a random `count` of the first ~1.17 x count FPS picks
                first = min(len(points), round(count * FPS_RANDOM_OVERSAMPLE))
                points = points[:first][torch.randperm(first)[:count]]
            else:  # random: from the pool (spatially more even than the source's draw from all points)
                points = torch.from_numpy(choose_points(points.numpy(), count, how))
        if self.augment and spec["augment"]:
            points = augment_points(points, spec["augment"], spec["up"], spec["normals"])
        return {**item, "points": points.contiguous()}
