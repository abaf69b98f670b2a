"""The NeRF radiance-grid dataset (crops, flips) and its LightningDataModule."""

from __future__ import annotations

import copy
import json
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maekit.data.base import MaekitDataModule
from maekit.errors import ConfigError, DataError
from maekit.domains.nerf.readers import DensityMode, NERF_CHANNELS, NerfTask, read_nerf_grid


def _downsample(item: dict[str, Any], factor: int) -> dict[str, Any]:
    """Average `factor`^3 blocks (RGB weighted by alpha; a grid not divisible is zero-padded and the
    padded voxels count as empty); labels take the centre voxel of each block."""
    image = item["image"]
    pads = [(-s) % factor for s in image.shape[1:]]
    spec = [v for p in reversed(pads) for v in (0, p)]
    image = torch.nn.functional.pad(image, spec)
    alpha = torch.nn.functional.avg_pool3d(image[3:4][None], factor)[0]
    weighted = torch.nn.functional.avg_pool3d((image[:3] * image[3:4])[None], factor)[0]
    plain = torch.nn.functional.avg_pool3d(image[:3][None], factor)[0]
    rgb = torch.where(alpha > 1e-6, weighted / alpha.clamp(min=1e-6), plain)
    out = {**item, "image": torch.cat([rgb.clamp(0, 1), alpha], 0)}
    out["resolution"] = tuple(int(s) for s in out["image"].shape[1:])
    if "semantic" in item:
        sem = torch.nn.functional.pad(item["semantic"], spec)
        c = factor // 2
        out["semantic"] = sem[c::factor, c::factor, c::factor].contiguous()
    return out


class NerfGridDataset(Dataset):
    """NeRF grids as samples padded (or cropped, when allowed) to one `grid_size`.

    Items: `image` (4, X, Y, Z) float [r, g, b, alpha], `valid` (X, Y, Z) bool (False on
    padding), `path`; `mask` (X, Y, Z) long for segmentation (padding labelled 0, empty space,
    which is what padding looks like: alpha 0) and `label` (long scalar) for classification.
    """

    def __init__(self, files: list[Path], grid_size: tuple[int, int, int], density: DensityMode = "instant_ngp",
                 task: NerfTask = "pretrain", crop: bool = False, random_crop: bool = False, flips: bool = False,
                 downsample: int = 1, cache: bool = True) -> None:
        self.files, self.grid_size, self.density, self.task = list(files), tuple(grid_size), density, task
        self.crop, self.random_crop, self.flips = crop, random_crop, flips
        self.downsample, self.cache = downsample, cache
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> dict[str, Any]:
        """The checked grid of file `index` (downsampled if asked), cached when `cache`."""
        if index in self._cache:
            return self._cache[index]
        item = read_nerf_grid(self.files[index], self.density, with_semantic=self.task == "segmentation",
                              with_scene_class=self.task == "classification")
        if self.downsample > 1:
            item = _downsample(item, self.downsample)
        if self.cache:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.load(index)
        path = self.files[index]
        image, label = item["image"], item.get("semantic")
        shape = tuple(image.shape[1:])
        too_big = [a for a in range(3) if shape[a] > self.grid_size[a]]
        if too_big and not self.crop:
            raise DataError(path, f"grid {list(shape)} is larger than grid_size {list(self.grid_size)}; raise "
                                  "grid_size, set downsample, or set crop: true to take crops")
        if too_big:
            starts = [(random.randint(0, max(0, s - g)) if self.random_crop else max(0, s - g) // 2)
                      for s, g in zip(shape, self.grid_size)]
            window = tuple(slice(b, b + g) for b, g in zip(starts, self.grid_size))
            image = image[(slice(None), *window)]
            label = label[window] if label is not None else None
        if self.flips:  # mirror the two horizontal axes (H, the last, is up)
            for axis in (0, 1):
                if random.random() < 0.5:
                    image = image.flip(1 + axis)
                    label = label.flip(axis) if label is not None else None
        pads = [g - s for g, s in zip(self.grid_size, image.shape[1:])]
        valid = torch.ones(image.shape[1:], dtype=torch.bool)
        if any(pads):
            spec = [v for p in reversed(pads) for v in (0, p)]
            image = torch.nn.functional.pad(image, spec)
            valid = torch.nn.functional.pad(valid, spec, value=False)
            label = torch.nn.functional.pad(label, spec) if label is not None else None
        out: dict[str, Any] = {"image": image.contiguous(), "valid": valid, "path": str(path)}
        if label is not None:
            out["mask"] = label.contiguous()
        if self.task == "classification":
            out["label"] = torch.tensor(item["scene_class"], dtype=torch.long)
        return out


    def shard_plan(self, seed: int) -> tuple[Dataset, dict[str, Any]]:
        """Shards store padded (centre-cropped when `crop`) grids; flips run at stream time."""
        plain = copy.copy(self)
        plain.random_crop, plain.flips, plain.cache, plain._cache = False, False, False, {}
        return plain, {"kind": "nerf", "finish": f"{__name__}:FinishNerf", "flips": self.flips}


def list_grids(folder: Path) -> list[Path]:
    """The `.npz` grids under `folder` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*.npz") if p.is_file() and not p.name.startswith("."))


def _grid_shape(path: Path) -> tuple[int, ...]:
    """The shape of a file's `rgbsigma` without loading it (full checks happen on reading)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("rgbsigma.npy") as member:
            version = np.lib.format.read_magic(member)
            fmt = np.lib.format
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, _ = read_header(member)
    except KeyError:
        raise DataError(path, "has no 'rgbsigma' array; a NeRF grid .npz needs rgbsigma (W, L, H, 4) "
                              "and resolution") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(path, f"cannot be read as a NeRF grid .npz ({type(e).__name__}: {e})") from e
    return tuple(int(s) for s in shape)


class NerfGridDataModule(MaekitDataModule):
    """A folder of NeRF grid `.npz` files for pretraining, voxel labelling or scene classification.

    Args:
        root: folder of `.npz` grids (recursively); with `train/` and `val/` subfolders those are
            the splits, otherwise `val_fraction` of the files (seeded) are held out.
        density: how the fourth channel becomes alpha: 'instant_ngp', 'relu' or 'alpha'.
        task: 'pretrain', 'segmentation' (needs `semantic` in every file, batches get `mask`) or
            'classification' (needs `scene_class`, batches get `label`).
        grid_size: the size every grid is padded to (X, Y, Z); None takes the largest extent per
            axis over the dataset, rounded up to `pad_multiple`.
        pad_multiple: multiple the automatic grid size is rounded up to (the patch size).
        crop: grids larger than `grid_size` are cropped (random in training, centred otherwise)
            instead of refused.
        downsample: average-pool every grid by this factor first (e.g. 2 turns 160 into 80).
        flips: mirror training grids along the two horizontal axes.
        val_whole_grids: validate on whole grids, never cropped (padded to the largest grid of the
            dataset), one per batch: the sliding-window validation of `VolumeSegmentationTask`
            while training on crops of `grid_size`.
        batch_size, num_workers, val_fraction, seed, cache: loader settings.
        classes: scene class names (classification); default from `classes.json` in `root`
            (`{"scene_classes": [...]}`) or 0..max.
    """

    channels = NERF_CHANNELS

    def __init__(self, root: str, density: DensityMode = "instant_ngp", task: NerfTask = "pretrain",
                 grid_size: list[int] | None = None, pad_multiple: int = 4, crop: bool = False, downsample: int = 1,
                 flips: bool = True, val_whole_grids: bool = False, batch_size: int = 2, num_workers: int = 0,
                 val_fraction: float = 0.2, seed: int = 0, cache: bool = True,
                 classes: list[str] | None = None) -> None:
        super().__init__()
        self.root, self.density, self.task = Path(root), density, task
        if grid_size is not None and len(grid_size) != 3:
            raise ConfigError(f"grid_size needs 3 values (X, Y, Z), got {grid_size}")
        if downsample < 1 or pad_multiple < 1:
            raise ConfigError(f"downsample ({downsample}) and pad_multiple ({pad_multiple}) must be >= 1")
        self.grid_size = tuple(grid_size) if grid_size is not None else None
        self.pad_multiple, self.crop, self.downsample, self.flips = pad_multiple, crop, downsample, flips
        self.val_whole_grids = val_whole_grids
        self.batch_size, self.num_workers, self.val_fraction, self.seed, self.cache = (
            batch_size, num_workers, val_fraction, seed, cache)
        self.classes: list[str] = list(classes or [])
        self.datasets: dict[str, NerfGridDataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _splits(self) -> dict[str, list[Path]]:
        if not self.root.is_dir():
            raise DataError(self.root, "is not a folder")
        if (self.root / "train").is_dir() and (self.root / "val").is_dir():
            splits = {"train": list_grids(self.root / "train"), "val": list_grids(self.root / "val")}
        else:
            val, train = self.seeded_split(list_grids(self.root), self.val_fraction, at_least_one=True)
            splits = {"val": sorted(val), "train": sorted(train)}
        if not splits["train"]:
            raise DataError(self.root, "holds no .npz NeRF grids")
        return splits

    def _auto_grid_size(self, files: list[Path]) -> tuple[int, int, int]:
        largest = [1, 1, 1]
        for path in files:
            shape = _grid_shape(path)
            if len(shape) != 4:  # reported in full by the reader
                read_nerf_grid(path, self.density)
            for a in range(3):
                largest[a] = max(largest[a], -(-shape[a] // self.downsample))
        m = self.pad_multiple
        return tuple(-(-s // m) * m for s in largest)  # type: ignore[return-value]

    def _scene_classes(self, files: list[Path]) -> None:
        if self.classes:
            return
        names = self.root / "classes.json"
        if names.is_file():
            try:
                listed = json.loads(names.read_text()).get("scene_classes")
            except (OSError, ValueError, AttributeError) as e:
                raise DataError(names, f"cannot be read as JSON with a scene_classes list ({e})") from e
            if listed:
                self.classes = [str(c) for c in listed]
                return
        found = [read_nerf_grid(p, self.density, with_scene_class=True)["scene_class"] for p in files]
        self.classes = [str(c) for c in range(max(found) + 1)]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = self._splits()
        every = splits["train"] + splits["val"]
        size = self.grid_size or self._auto_grid_size(every)
        self.resolved_grid_size = size  # what training batches get
        if self.task == "classification":
            self._scene_classes(every)
        for name, files in splits.items():
            train = name == "train"
            whole = not train and self.val_whole_grids
            self.datasets[name] = NerfGridDataset(files, self._auto_grid_size(every) if whole else size,
                                                  self.density, self.task, crop=self.crop and not whole,
                                                  random_crop=train, flips=train and self.flips,
                                                  downsample=self.downsample, cache=self.cache)
        if self.task == "classification":
            for ds in self.datasets.values():
                for i in range(len(ds)):
                    c = ds.load(i)["scene_class"]
                    if c >= len(self.classes):
                        raise DataError(ds.files[i], f"scene_class {c} is outside the {len(self.classes)} classes "
                                                     f"{self.classes}")
        if not splits["val"]:
            warnings.warn(f"{self.root}: no validation grids (val_fraction {self.val_fraction})", stacklevel=2)

    #: grids are padded to one size: every batch is full-sized, none is dropped
    drop_last_train = False

    @property
    def eval_batch_size(self) -> int:
        """1 when validation runs on whole grids of different sizes."""
        return 1 if self.val_whole_grids else self.batch_size


class FinishNerf:
    """A stored grid -> the source's horizontal flips of the grid (not of its padding)."""

    def __init__(self, spec: dict[str, Any], augment: bool) -> None:
        self.flips = augment and spec["flips"]

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        if not self.flips:
            return item
        out = dict(item)
        valid = item["valid"]
        extent = [int(valid.any(dim=tuple(d for d in range(3) if d != a)).sum()) for a in range(3)]
        for axis in (0, 1):  # mirror the grid inside its (zero-based) unpadded box, as the source does
            if random.random() < 0.5:
                for key, offset in (("image", 1), ("mask", 0)):
                    if key in out:
                        box = [slice(None)] * offset + [slice(0, e) for e in extent]
                        flipped = out[key].clone()
                        flipped[tuple(box)] = out[key][tuple(box)].flip(offset + axis)
                        out[key] = flipped
        return out
