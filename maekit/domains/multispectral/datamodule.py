"""Datasets and a LightningDataModule for folders of image chips (GeoTIFF, .npy, .npz, JPEG/PNG).

Layouts (the ones EuroSAT, FireRisk and most chip exports use):
- pretraining: every chip file below `root` (or below `root/train` and `root/val`);
- classification: `root/<split>/<class name>/<chip>`;
- segmentation: `root/<split>/images/<chip>` with `root/<split>/masks/<same stem>.tif`.
Without `train`/`val` folders, files are split at random (seeded) by `val_fraction`.
"""

from __future__ import annotations

import copy
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import rasterio
import torch
from torch.utils.data import DataLoader, Dataset

from maekit.data.base import MaekitDataModule
from maekit.domains.multispectral.spec import PresetName, get_preset
from maekit.domains.multispectral.readers import (ARRAY_SUFFIXES, PICTURE_SUFFIXES, RASTER_SUFFIXES, chip_size,
                                                  read_chip)
from maekit.errors import ConfigError, DataError

TaskName = Literal["pretrain", "classification", "segmentation"]
#: the file kinds read as chips (and named, exactly these, when a folder holds none)
CHIP_SUFFIXES = RASTER_SUFFIXES + ARRAY_SUFFIXES + PICTURE_SUFFIXES


def list_chips(folder: Path) -> list[Path]:
    """Chip files below `folder`, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in CHIP_SUFFIXES and p.is_file())


class ChipDataset(Dataset):
    """Chips with optional class labels or masks, as dicts of tensors.

    Items: `image` (C, H, W) stored dtype, `valid` (H, W) bool (when `with_valid`), `label`
    (long scalar) for classification or `mask` (H, W) long for segmentation, and `path`.
    """

    def __init__(
        self,
        files: Sequence[Path],
        file_bands: Sequence[str],
        bands: Sequence[str | int] | None = None,
        labels: Sequence[int] | None = None,
        masks: Sequence[Path] | None = None,
        crop_size: int | None = None,
        random_crop: bool = False,
        flips: bool = False,
        nodata: float | None = None,
        with_valid: bool = True,
    ) -> None:
        self.files = list(files)
        self.file_bands, self.bands = list(file_bands), bands
        self.labels, self.masks = labels, masks
        self.crop_size, self.random_crop, self.flips = crop_size, random_crop, flips
        self.nodata, self.with_valid = nodata, with_valid

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        chip = read_chip(path, self.file_bands, self.bands, self.nodata)
        arrays = [chip.image, chip.valid[None]]
        if self.masks is not None:
            arrays.append(_read_mask(self.masks[index], chip.image.shape[1:])[None])
        arrays = self._crop(path, arrays)
        if self.flips:
            if random.random() < 0.5:
                arrays = [a[..., ::-1] for a in arrays]
            if random.random() < 0.5:
                arrays = [a[..., ::-1, :] for a in arrays]
        item: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(arrays[0])), "path": str(path)}
        if self.with_valid:
            item["valid"] = torch.from_numpy(np.ascontiguousarray(arrays[1][0]))
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[index], dtype=torch.long)
        if self.masks is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(arrays[2][0]).astype(np.int64))
        return item

    def _crop(self, path: Path, arrays: list[np.ndarray]) -> list[np.ndarray]:
        size = self.crop_size
        if size is None:
            return arrays
        height, width = arrays[0].shape[1:]
        if height < size or width < size:
            raise DataError(path, f"is {height}x{width}, smaller than the crop size {size}")
        if self.random_crop:
            top, left = random.randint(0, height - size), random.randint(0, width - size)
        else:
            top, left = (height - size) // 2, (width - size) // 2
        return [a[:, top:top + size, left:left + size] for a in arrays]


    def shard_plan(self, seed: int) -> tuple[Dataset, dict[str, Any]]:
        """Shards store whole chips; random crops to `crop_size` and flips run at stream time."""
        plain = copy.copy(self)
        plain.crop_size, plain.random_crop, plain.flips = None, False, False
        return plain, {"kind": "chips", "finish": f"{__name__}:FinishChip", "crop_size": self.crop_size,
                       "random_crop": self.random_crop, "flips": self.flips}


def _read_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A single-band label raster of the same size as its image."""
    try:
        with rasterio.open(path) as src:
            if src.count != 1:
                raise DataError(path, f"a mask must have 1 band, this one has {src.count}")
            mask = src.read(1)
    except rasterio.errors.RasterioError as err:
        raise DataError(path, f"cannot be read as a mask raster: {err}") from err
    if mask.shape != tuple(shape):
        raise DataError(path, f"mask is {mask.shape[0]}x{mask.shape[1]} but its image is {shape[0]}x{shape[1]}")
    return mask


class ChipDataModule(MaekitDataModule):
    """Chip folders for pretraining, classification or segmentation.

    Args:
        root: the dataset folder.
        preset: sensor defaults for `file_bands` and nodata.
        file_bands: names of the bands stored in each file, in order.
        bands: bands to read, by name or 1-based index (default all); the model learns which
            bands it gets from here.
        task: what the labels are.
        batch_size, num_workers: loader settings.
        val_fraction: share of files for validation when there is no `val` folder.
        labels_per_class: keep only this many training chips per class (a small labelled set).
        crop_size: random crop (train) / centre crop (val) to this size. None: the chips' size
            (chips used whole when they all have one size; else cropped to the smallest side,
            with a note). Chip sizes are checked at `setup`: a crop larger than a chip is an
            error naming the chip and its size.
        flips: random horizontal/vertical flips in training.
        nodata: overrides the files' nodata value.
        mask_nodata: hand a per-pixel validity mask to the model (default: when nodata is set).
        seed: for the split and the labelled subset.
    """

    def __init__(
        self,
        root: str,
        preset: PresetName | None = "naip",
        file_bands: list[str] | None = None,
        bands: list[str | int] | None = None,
        task: TaskName = "pretrain",
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        labels_per_class: int | None = None,
        crop_size: int | None = None,
        flips: bool = True,
        nodata: float | None = None,
        mask_nodata: bool | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        p = get_preset(preset) if preset else None
        self.root = Path(root)
        self.file_bands = list(file_bands) if file_bands is not None else (list(p.bands) if p else [])
        if not self.file_bands:
            raise ConfigError("ChipDataModule needs `file_bands` or a `preset`")
        self.requested_bands = bands
        self.bands: list[str] = self._band_names(bands)
        self.task = task
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.labels_per_class = val_fraction, labels_per_class
        self.crop_size, self.flips, self.seed = crop_size, flips, seed
        self.nodata = nodata if nodata is not None else (p.nodata if p else None)
        self.mask_nodata = mask_nodata
        self.classes: list[str] = []
        self.datasets: dict[str, ChipDataset] = {}

    def _band_names(self, bands: list[str | int] | None) -> list[str]:
        if bands is None:
            return list(self.file_bands)
        names = []
        for b in bands:
            if isinstance(b, int) or str(b).isdigit():
                i = int(b)
                if not 1 <= i <= len(self.file_bands):
                    raise ConfigError(f"band index {i} is out of range 1..{len(self.file_bands)}")
                names.append(self.file_bands[i - 1])
            elif b in self.file_bands:
                names.append(str(b))
            else:
                raise ConfigError(f"unknown band {b!r}; the files' bands are {self.file_bands}")
        return names

    # ------------------------------------------------------------------ file listing
    def _split_folders(self) -> dict[str, Path] | None:
        if (self.root / "train").is_dir():
            return {s: self.root / s for s in ("train", "val", "test") if (self.root / s).is_dir()}
        return None

    def _collect(self, folder: Path) -> tuple[list[Path], list[int] | None, list[Path] | None]:
        if self.task == "classification":
            class_dirs = sorted(d for d in folder.iterdir() if d.is_dir())
            if not self.classes:
                self.classes = [d.name for d in class_dirs]
            files, labels = [], []
            for d in class_dirs:
                if d.name not in self.classes:
                    raise DataError(d, f"class folder not among the training classes {self.classes}")
                chips = list_chips(d)
                files += chips
                labels += [self.classes.index(d.name)] * len(chips)
            return files, labels, None
        if self.task == "segmentation":
            images = list_chips(folder / "images")
            masks = []
            for image in images:
                mask = folder / "masks" / f"{image.stem}.tif"
                if not mask.exists():
                    raise DataError(image, f"has no mask at {mask}")
                masks.append(mask)
            return images, None, masks
        return list_chips(folder), None, None

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist")
        splits = self._split_folders()
        parts: dict[str, tuple[list[Path], list[int] | None, list[Path] | None]] = {}
        if splits is not None:
            for name, folder in splits.items():
                parts[name] = self._collect(folder)
        if "val" not in parts:  # no val folder: a seeded share of the training files
            files, labels, masks = parts.pop("train") if "train" in parts else self._collect(self.root)
            for name, idx in zip(("val", "train"), self.seeded_split(range(len(files)), self.val_fraction)):
                parts[name] = ([files[i] for i in idx], None if labels is None else [labels[i] for i in idx],
                               None if masks is None else [masks[i] for i in idx])
        if not parts.get("train", ([],))[0]:
            raise DataError(self.root, f"no chip files ({', '.join(CHIP_SUFFIXES)}) found for training "
                                       f"in the {self.task} layout")
        if self.labels_per_class is not None and parts["train"][1] is not None:
            parts["train"] = self._subsample(*parts["train"])
        self.crop_size = self._resolve_crop([f for files, _, _ in parts.values() for f in files])
        with_valid = self.mask_nodata
        if with_valid is None:
            with_valid = self.nodata is not None or self._declares_nodata(parts["train"][0][0])
        for name, (files, labels, masks) in parts.items():
            train = name == "train"
            self.datasets[name] = ChipDataset(
                files, self.file_bands, self.requested_bands, labels, masks, self.crop_size,
                random_crop=train, flips=train and self.flips, nodata=self.nodata, with_valid=with_valid)

    def _resolve_crop(self, files: list[Path]) -> int | None:
        """The crop size checked against every chip's size (header reads only)."""
        sizes = {path: chip_size(path) for path in files}
        smallest = min(sizes.items(), key=lambda kv: min(kv[1]))
        if self.crop_size is not None:
            if self.crop_size > min(smallest[1]):
                small = sum(min(hw) < self.crop_size for hw in sizes.values())
                h, w = smallest[1]
                raise DataError(smallest[0], f"is {h}x{w}, smaller than crop_size {self.crop_size} ({small} of "
                                             f"{len(sizes)} chips are): set crop_size to {min(h, w)} or less, or "
                                             "leave it unset (null) to use the chips' size")
            return self.crop_size
        distinct = set(sizes.values())
        if len(distinct) == 1:  # one size: chips are used whole
            h, w = next(iter(distinct))
            print(f"maekit: crop_size unset: the {len(sizes)} chips are {h}x{w}, used whole", file=sys.stderr)
            return None
        side = min(smallest[1])
        print(f"maekit: chips under {self.root} have {len(distinct)} sizes (smallest {smallest[1][0]}x"
              f"{smallest[1][1]}, {smallest[0].name}); crop_size unset, so they are cropped to {side}x{side}",
              file=sys.stderr)
        return side

    def _subsample(self, files: list[Path], labels: list[int], masks: Any) -> tuple[list[Path], list[int], None]:
        keep = self.per_class_subset(labels, self.labels_per_class)  # type: ignore[arg-type]
        return [files[i] for i in keep], [labels[i] for i in keep], None

    @staticmethod
    def _declares_nodata(path: Path) -> bool:
        if path.suffix.lower() in ARRAY_SUFFIXES + PICTURE_SUFFIXES:  # neither kind declares nodata
            return False
        try:
            with rasterio.open(path) as src:
                return src.nodata is not None
        except rasterio.errors.RasterioError as err:
            raise DataError(path, f"cannot be opened as a raster: {err}") from err

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class FinishChip:
    """A stored whole chip -> the source's crop (random, or centre when not augmenting) and flips."""

    def __init__(self, spec: dict[str, Any], augment: bool) -> None:
        self.spec, self.augment = spec, augment

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        spatial = [k for k in ("image", "valid", "mask") if k in item]
        size = self.spec["crop_size"]
        out = dict(item)
        if size is not None:
            height, width = item["image"].shape[-2:]
            if height < size or width < size:
                raise DataError(item.get("path", "?"), f"is {height}x{width}, smaller than the crop size {size}")
            if self.spec["random_crop"] and self.augment:
                top, left = random.randint(0, height - size), random.randint(0, width - size)
            else:
                top, left = (height - size) // 2, (width - size) // 2
            for k in spatial:
                out[k] = out[k][..., top:top + size, left:left + size]
        if self.spec["flips"] and self.augment:
            for dim in (-1, -2):
                if random.random() < 0.5:
                    for k in spatial:
                        out[k] = out[k].flip(dim)
        for k in spatial:
            out[k] = out[k].contiguous()
        return out
