"""NeRF radiance/density grids in the NeRF-MAE / NeRF-RPN `.npz` format, and their datamodule.

One `.npz` per scene holds `rgbsigma` (W, L, H, 4): RGB in [0, 1] and a raw density, and
`resolution` (the grid shape W, L, H). Optional entries this kit uses for fine-tuning:
`semantic` (W, L, H) integer voxel labels (0 = empty space) and `scene_class` (an integer).

Densities become opacities (alpha in [0, 1]) on reading, by the convention of the grids:
- `instant_ngp`: alpha = 1 - exp(-exp(sigma) / 100) (Instant-NGP grids, NeRF-RPN / NeRF-MAE);
- `relu`: alpha = 1 - exp(-relu(sigma) / 100);
- `alpha`: the fourth channel already is an opacity in [0, 1].

Grids are not cubic (NeRF-MAE: longest side 160). A batch pads every grid to one size with
zeros *after* the grid along each axis, and `valid` marks the padding False so that it is
never scored.
"""

from __future__ import annotations

import json
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maekit.datasets.resumable import ResumableLoader, training_loader
from maekit.errors import ConfigError, DataError

DensityMode = Literal["instant_ngp", "relu", "alpha"]
NerfTask = Literal["pretrain", "segmentation", "classification"]
#: channel names of the model side, in order
NERF_CHANNELS = ["r", "g", "b", "alpha"]
#: tolerance on RGB outside [0, 1] (rounding in exported grids); beyond it a file is refused
_RGB_TOLERANCE = 1e-3


def density_to_alpha(sigma: np.ndarray, mode: DensityMode = "instant_ngp") -> np.ndarray:
    """Opacity in [0, 1] (float32) from a raw density by the grid's convention (see the module doc)."""
    s = np.asarray(sigma, dtype=np.float64)
    if mode == "alpha":
        return s.astype(np.float32)
    with np.errstate(over="ignore"):  # exp of a large density is inf, and 1 - exp(-inf) = 1
        rate = np.exp(s) if mode == "instant_ngp" else np.maximum(s, 0.0)
        alpha = -np.expm1(-rate / 100.0)
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


def alpha_to_density(alpha: np.ndarray, mode: DensityMode = "instant_ngp") -> np.ndarray:
    """The raw density that `density_to_alpha` maps back to `alpha` (alpha clipped to [1e-6, 1 - 1e-6])."""
    a = np.clip(np.asarray(alpha, dtype=np.float64), 1e-6, 1.0 - 1e-6)
    if mode == "alpha":
        return np.asarray(alpha, dtype=np.float32)
    rate = -100.0 * np.log1p(-a)
    return (np.log(rate) if mode == "instant_ngp" else rate).astype(np.float32)


def read_nerf_grid(path: str | Path, density: DensityMode = "instant_ngp", with_semantic: bool = False,
                   with_scene_class: bool = False) -> dict[str, Any]:
    """Read one NeRF grid `.npz` and check it.

    Returns `image` (4, W, L, H) float32 tensor of [r, g, b, alpha], `resolution` (W, L, H),
    and when asked `semantic` (W, L, H) long and `scene_class` int. Every problem (unreadable
    file, no `rgbsigma`, wrong shape or channel count, NaN/inf, `resolution` disagreeing with the
    array, RGB outside [0, 1], labels of the wrong shape) raises a `DataError` naming the file.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "rgbsigma" not in keys:
                raise DataError(path, f"has no 'rgbsigma' array (it holds {sorted(keys) or 'nothing'}); a NeRF "
                                      "grid .npz needs rgbsigma (W, L, H, 4) and resolution")
            rgbsigma = np.asarray(npz["rgbsigma"])
            resolution = np.asarray(npz["resolution"]) if "resolution" in keys else None
            semantic = np.asarray(npz["semantic"]) if with_semantic and "semantic" in keys else None
            scene_class = np.asarray(npz["scene_class"]) if with_scene_class and "scene_class" in keys else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(path, f"cannot be read as a NeRF grid .npz ({type(e).__name__}: {e})") from e
    if rgbsigma.ndim != 4:
        raise DataError(path, f"rgbsigma has shape {rgbsigma.shape}; expected (W, L, H, 4)")
    if rgbsigma.shape[-1] != 4:
        raise DataError(path, f"rgbsigma has {rgbsigma.shape[-1]} channels; expected 4 (r, g, b, sigma)")
    if not np.issubdtype(rgbsigma.dtype, np.number):
        raise DataError(path, f"rgbsigma has dtype {rgbsigma.dtype}; expected numbers")
    shape = tuple(int(s) for s in rgbsigma.shape[:3])
    if min(shape) < 1:
        raise DataError(path, f"rgbsigma is empty (shape {rgbsigma.shape})")
    if resolution is not None:
        declared = tuple(int(v) for v in resolution.reshape(-1))
        if declared != shape:
            raise DataError(path, f"resolution entry {list(declared)} disagrees with the rgbsigma grid {list(shape)}")
    grid = rgbsigma.astype(np.float32, copy=False)
    bad = ~np.isfinite(grid)
    if bad.any():
        in_density = int(bad[..., 3].sum())
        raise DataError(path, f"contains {int(bad.sum())} NaN/inf values ({in_density} in the density channel, "
                              f"{int(bad[..., :3].sum())} in RGB)")
    rgb = grid[..., :3]
    low, high = float(rgb.min()), float(rgb.max())
    if low < -_RGB_TOLERANCE or high > 1.0 + _RGB_TOLERANCE:
        raise DataError(path, f"RGB spans [{low:.4g}, {high:.4g}]; NeRF grids hold RGB in [0, 1] "
                              "(divide 8-bit colours by 255)")
    alpha = density_to_alpha(grid[..., 3], density)
    if density == "alpha" and (float(alpha.min()) < -_RGB_TOLERANCE or float(alpha.max()) > 1.0 + _RGB_TOLERANCE):
        raise DataError(path, f"density: alpha was set but the fourth channel spans [{float(alpha.min()):.4g}, "
                              f"{float(alpha.max()):.4g}]; use density: instant_ngp or relu for raw densities")
    image = np.concatenate([np.clip(rgb, 0.0, 1.0), np.clip(alpha, 0.0, 1.0)[..., None]], -1)
    out: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(3, 0, 1, 2))),
                           "resolution": shape}
    if with_semantic:
        if semantic is None:
            raise DataError(path, "has no 'semantic' array (W, L, H) of voxel labels, needed for segmentation")
        if tuple(semantic.shape) != shape:
            raise DataError(path, f"semantic has shape {semantic.shape} but rgbsigma is {list(shape)}")
        if not np.issubdtype(semantic.dtype, np.integer) or (semantic.size and int(semantic.min()) < 0):
            raise DataError(path, f"semantic must hold non-negative integer labels (dtype {semantic.dtype})")
        out["semantic"] = torch.from_numpy(semantic.astype(np.int64))
    if with_scene_class:
        if scene_class is None or scene_class.size != 1 or not np.issubdtype(scene_class.dtype, np.integer):
            raise DataError(path, "has no integer 'scene_class' entry, needed for scene classification")
        out["scene_class"] = int(scene_class.reshape(-1)[0])
    return out


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


class NerfGridDataModule(L.LightningDataModule):
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
            files = list_grids(self.root)
            order = list(range(len(files)))
            random.Random(self.seed).shuffle(order)
            n_val = int(round(self.val_fraction * len(files)))
            if 0 < self.val_fraction < 1 and len(files) > 1:
                n_val = min(max(n_val, 1), len(files) - 1)
            splits = {"val": sorted(files[i] for i in order[:n_val]), "train": sorted(files[i] for i in order[n_val:])}
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

    def train_dataloader(self) -> ResumableLoader:
        return training_loader(self, self.datasets["train"], self.batch_size, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        size = 1 if self.val_whole_grids else self.batch_size
        return DataLoader(self.datasets["val"], batch_size=size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
