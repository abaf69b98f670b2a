"""Streaming shards: convert any domain's dataset once into litdata chunks, then train from them.

    maekit shard -c configs/naip/pretrain.yaml --out /data/naip_shards [--data.root DIR ...]
    maekit fit -c configs/naip/pretrain.yaml --data maekit.datasets.shards.StreamingShardsDataModule \
        --data.root /data/naip_shards          # or s3://bucket/naip_shards

Layout of a shard folder: `<split>/chunk-*.bin` + `<split>/index.json` (litdata's optimised
format, streamable from local disk or object storage, with DDP sharding and resumable loader
state) and `maekit_shards.json`, a manifest naming the source datamodule, the attributes models
read from it (bands, channels, modalities, classes), the sample count and the keys and dtypes of
a sample per split, and how to finish a stored sample at stream time.

What is stored is each sample's deterministic, pre-augmentation form; the random parts of the
source's training pipeline run at stream time, per domain:
- chips (`ChipDataset`): whole chips are stored; random crop to `crop_size` and flips at stream
  time (centre crop for validation), as the source does;
- raster windows (`RandomWindowDataset`): a fixed, seeded set of windows (`samples_per_epoch`
  training, `val_samples` validation); nothing random at stream time;
- volumes (`VolumeDataset`): whole preprocessed cases (reoriented, resampled, normalised,
  foreground-cropped); padding, random crops of `roi_size`, flips and dropped modalities at stream
  time by the source's own `VolumeDataset` code;
- point clouds (`PointCloudDataset`): a pool of up to 8 × `num_points` points per cloud in
  farthest-point order; at stream time the source's training draw (`random`: from the pool, so a
  little more even than from all points; `fps_random`: exactly the source's draw) in training,
  the first `num_points` (the source's FPS sample) otherwise, then the source's `augment_points`;
- NeRF grids (`NerfGridDataset`): padded (centre-cropped when `crop`) grids; horizontal flips of
  the grid (not its padding) at stream time;
- skeleton sequences (`SkeletonDataset`): centred sequences trimmed to their valid frames; the
  random temporal crop-resize, rotation and shear at stream time by the source's own code;
- any other map-style dataset: its items as they are (a warning says augmentations are baked in).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from maekit.errors import ConfigError, DataError

MANIFEST = "maekit_shards.json"
SHARD_FORMAT = 2  # 2: point clouds stored as a pool of up to POINT_POOL x num_points
READABLE_FORMATS = (1, 2)
#: datamodule attributes that adapters and tasks read (`connect_datamodule`, class checks, writers)
DATAMODULE_ATTRIBUTES = ("bands", "channels", "modalities", "classes", "file_bands")
#: point clouds keep up to this many times `num_points` points, for per-epoch random subsets
POINT_POOL = 8


# ------------------------------------------------------------------------------ source datamodule
def datamodule_from_config(config: str | Path, overrides: Sequence[str] = ()) -> L.LightningDataModule:
    """The datamodule of a Lightning CLI config's `data:` section, with `--data.*` overrides."""
    import yaml
    from jsonargparse import ArgumentParser

    path = Path(config)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err})") from err
    loaded = yaml.safe_load(text) or {}
    if not isinstance(loaded, dict) or not isinstance(loaded.get("data"), dict):
        raise ConfigError(f"{path}: has no `data:` section with a class_path")
    unknown = [o for o in overrides if o.startswith("--") and not o.startswith("--data")]
    if unknown:
        raise ConfigError(f"maekit shard takes only --data.* overrides, not {unknown}")
    parser = ArgumentParser(prog="maekit shard", exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    try:
        namespace = parser.parse_args(["--data", json.dumps(loaded["data"]), *overrides])
    except Exception as err:  # jsonargparse reports bad values as ArgumentError / ValueError
        raise ConfigError(f"{path}: the data section cannot be used: {err}") from err
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(namespace).data


# ------------------------------------------------------------------------------ per-domain plans
class _VolumeStore(Dataset):
    """Whole preprocessed cases of a `VolumeDataset` (before padding, cropping, flips, drops)."""

    def __init__(self, source: Any) -> None:
        self.source = copy.copy(source)
        self.source.cache, self.source._cache = False, {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.source.load(index))
        item["case"] = self.source.cases[index].name
        if self.source.case_class is not None:
            item["case_label"] = torch.tensor(self.source.case_class[item["case"]], dtype=torch.long)
        return item


class _PointStore(Dataset):
    """A pool of up to `POINT_POOL` × `num_points` points per cloud of a `PointCloudDataset`,
    in farthest-point order, so streaming still draws a fresh random subset every epoch (Point-MAE
    draws 1024 of ShapeNet-55's 8192) and its first `num_points` are the source's FPS sample."""

    def __init__(self, source: Any) -> None:
        self.source = copy.copy(source)
        self.source.augment, self.source._h5 = [], {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from maekit.datasets.pointcloud import choose_points

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


class _SkeletonStore(Dataset):
    """Centred sequences of a `SkeletonDataset`, trimmed to their valid frames (before crop/resize)."""

    def __init__(self, source: Any) -> None:
        self.source = copy.copy(source)
        self.source.cache, self.source._parsed = False, {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        x, present = self.source.load(index)
        sample = self.source.samples[index]
        item: dict[str, Any] = {"sequence": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                                "person_present": torch.from_numpy(np.asarray(present, dtype=bool).copy()),
                                "name": str(sample.name)}
        if sample.label is not None:
            item["label"] = torch.tensor(sample.label, dtype=torch.long)
        return item


def _plan(dataset: Dataset, seed: int) -> tuple[Dataset, dict[str, Any]]:
    """(the dataset whose items are stored, how to finish a stored item at stream time)."""
    from maekit.datasets.chips import ChipDataset
    from maekit.datasets.medical import VolumeDataset
    from maekit.datasets.nerf import NerfGridDataset
    from maekit.datasets.pointcloud import PointCloudDataset
    from maekit.datasets.windows import RandomWindowDataset

    if isinstance(dataset, ChipDataset):
        plain = copy.copy(dataset)
        plain.crop_size, plain.random_crop, plain.flips = None, False, False
        return plain, {"kind": "chips", "crop_size": dataset.crop_size, "random_crop": dataset.random_crop,
                       "flips": dataset.flips}
    if isinstance(dataset, RandomWindowDataset):
        plain = copy.copy(dataset)
        if plain.seed is None:  # training windows: a fixed draw, apart from validation's (seed 0)
            plain.seed = seed + 1
        return plain, {"kind": "windows", "window_seed": plain.seed}
    if isinstance(dataset, VolumeDataset):
        return _VolumeStore(dataset), {
            "kind": "volumes", "roi_size": list(dataset.roi_size) if dataset.roi_size is not None else None,
            "random_crop": dataset.random_crop, "flips": dataset.flips, "drop": list(dataset.drop)}
    if isinstance(dataset, PointCloudDataset):
        return _PointStore(dataset), {
            "kind": "points", "num_points": dataset.num_points, "subsample": dataset.subsample,
            "augment": list(dataset.augment), "up": dataset.up, "normals": dataset._normals_column}
    if isinstance(dataset, NerfGridDataset):
        plain = copy.copy(dataset)
        plain.random_crop, plain.flips, plain.cache, plain._cache = False, False, False, {}
        return plain, {"kind": "nerf", "flips": dataset.flips}
    try:
        from maekit.datasets.skeleton import SkeletonDataset
    except ImportError:  # pragma: no cover - the skeleton domain is optional
        SkeletonDataset = ()  # type: ignore[assignment,misc]
    if SkeletonDataset and isinstance(dataset, SkeletonDataset):
        return _SkeletonStore(dataset), {
            "kind": "skeleton", "train": dataset.train, "crop_ratio": list(dataset.crop_ratio),
            "rotation": dataset.rotation, "shear": dataset.shear, "channels": dataset.channels,
            "persons": dataset.persons, "frames": dataset.frames}
    warnings.warn(f"{type(dataset).__name__} is not a dataset maekit knows how to shard: its items are stored "
                  "as they come, so any random augmentation in it is baked into the shards", stacklevel=3)
    return dataset, {"kind": "plain"}


# ------------------------------------------------------------------------------ stream-time finishing
class FinishSample:
    """Turns a stored sample into a training/validation sample at stream time (a litdata transform).

    `augment` False switches off every random step (random crops become centre crops), which is
    what makes a stream comparable sample by sample with its source.
    """

    def __init__(self, spec: dict[str, Any], augment: bool = True) -> None:
        self.spec, self.augment = dict(spec), augment
        self._helper: Any = None

    def __getstate__(self) -> dict[str, Any]:  # the helper is a local class: rebuilt in each worker
        return {**self.__dict__, "_helper": None}

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        strings = self.spec.get("strings", ())
        item = {k: bytes(v).decode() if k in strings and isinstance(v, (bytes, memoryview)) else v
                for k, v in item.items()}
        kind = self.spec["kind"]
        if kind == "chips":
            return self._chips(item)
        if kind == "volumes":
            return self._volumes(item)
        if kind == "points":
            return self._points(item)
        if kind == "nerf":
            return self._nerf(item)
        if kind == "skeleton":
            return self._skeleton(item)
        return item

    def _chips(self, item: dict[str, Any]) -> dict[str, Any]:
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

    def _volumes(self, item: dict[str, Any]) -> dict[str, Any]:
        from maekit.datasets.medical import Case, VolumeDataset

        class StoredVolume(VolumeDataset):
            """`VolumeDataset`'s padding, cropping, flips and drops applied to one stored case."""

            stored: dict[str, Any] = {}

            def load(self, index: int) -> dict[str, Any]:
                return self.stored

        if self._helper is None:
            augment = self.augment
            self._helper = StoredVolume([], [], "mri", None, self.spec["roi_size"],
                                        random_crop=self.spec["random_crop"] and augment,
                                        flips=self.spec["flips"] and augment, cache=False, drop=self.spec["drop"])
        stored = {k: v for k, v in item.items() if k not in ("case", "case_label")}
        self._helper.stored = stored
        self._helper.cases = [Case(item["case"])]
        out = self._helper[0]
        if "case_label" in item:
            out["label"] = item["case_label"]
        return out

    def _points(self, item: dict[str, Any]) -> dict[str, Any]:
        from maekit.datasets.pointcloud import FPS_RANDOM_OVERSAMPLE, augment_points, choose_points

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

    def _nerf(self, item: dict[str, Any]) -> dict[str, Any]:
        if not (self.augment and self.spec["flips"]):
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

    def _skeleton(self, item: dict[str, Any]) -> dict[str, Any]:
        from maekit.datasets.skeleton import SkeletonDataset, SkeletonSample

        spec = self.spec

        class StoredSkeleton(SkeletonDataset):
            """`SkeletonDataset`'s crop-resize, rotation and shear applied to one stored sequence."""

            stored: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))

            def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
                return self.stored

        if self._helper is None:
            train = spec["train"] and self.augment
            self._helper = StoredSkeleton([], None, spec["channels"], spec["persons"], spec["frames"], train,
                                          tuple(spec["crop_ratio"]), spec["rotation"], spec["shear"], cache=False)
        self._helper.stored = (item["sequence"].numpy(), item["person_present"].numpy())
        label = int(item["label"]) if "label" in item else None
        self._helper.samples = [SkeletonSample(item["name"], label)]
        return self._helper[0]


# ------------------------------------------------------------------------------ writing
def _encode_strings(item: dict[str, Any]) -> dict[str, Any]:
    """Strings as UTF-8 bytes: litdata would otherwise store the *contents* of any string that names
    an existing media file (a chip's `.tif` path, a case's `.nii.gz` source) instead of the string."""
    return {k: v.encode() if isinstance(v, str) else v for k, v in item.items()}


def _describe(item: dict[str, Any]) -> dict[str, Any]:
    """Keys, types, dtypes and shapes of one sample, for the manifest."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if isinstance(value, torch.Tensor):
            out[key] = {"type": "tensor", "dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape)}
        else:
            out[key] = {"type": type(value).__name__}
    return out


def _check_sample(item: Any, index: int, split: str, keys: list[str] | None) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ConfigError(f"the {split} dataset returns {type(item).__name__} items; shards need dict samples")
    if keys is not None and sorted(item) != keys:
        where = item.get("path") or item.get("case") or f"{split} sample {index}"
        raise DataError(where, f"has the keys {sorted(item)}, unlike the first {split} sample's {keys}; "
                               "every sample of a split must have the same keys to be sharded")
    for key, value in item.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DataError(item.get("path") or item.get("case") or f"{split} sample {index}",
                            f"{key} holds NaN or infinite values")
    return item


def _datamodule_attributes(dm: L.LightningDataModule) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name in DATAMODULE_ATTRIBUTES:
        value = getattr(dm, name, None)
        if value is not None:
            attributes[name] = list(value) if isinstance(value, (list, tuple)) else value
    for name in ("num_classes", "batch_size", "num_workers"):
        if isinstance(getattr(dm, name, None), int):
            attributes[name] = getattr(dm, name)
    return attributes


def write_shards(source: str | Path | L.LightningDataModule, out_dir: str | Path,
                 splits: Sequence[str] = ("train", "val"), overrides: Sequence[str] = (),
                 chunk_bytes: str | int = "64MB", seed: int = 0, overwrite: bool = False,
                 on_sample: Callable[[str, int], None] | None = None) -> Path:
    """Write `splits` of a datamodule (an instance, or a config file whose `data:` section is used,
    with `--data.*` `overrides`) as litdata shards under `out_dir`, plus the manifest.

    Samples are stored in their deterministic, pre-augmentation form (see the module doc), in
    the source's order. Everything is written into a temporary folder beside `out_dir` and
    renamed at the end: a failure leaves no `out_dir` behind (and an existing one untouched).
    `seed` fixes every random choice made while writing (training windows, point repeats).
    `on_sample(split, index)` is called after each stored sample (progress, tests).
    """
    from litdata.streaming.writer import BinaryWriter

    out = Path(out_dir)
    if str(out_dir).startswith(("s3://", "gs://", "azure://")):
        raise ConfigError(f"{out_dir}: shards are written to a local folder; copy it to object storage after "
                          "(e.g. `aws s3 sync`) and stream from there")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists; remove it or pass overwrite (--overwrite)")
    if isinstance(source, L.LightningDataModule):
        dm, config = source, None
    else:
        dm, config = datamodule_from_config(source, overrides), str(source)
    dm.setup("fit")
    datasets = getattr(dm, "datasets", None)
    if not isinstance(datasets, dict):
        raise ConfigError(f"{type(dm).__name__} has no `datasets` dict after setup(); maekit shard reads "
                          "the splits from it")
    missing = [s for s in splits if s not in datasets]
    if missing:
        raise ConfigError(f"{type(dm).__name__} has no {missing} split(s) (it has {sorted(datasets)})")
    manifest: dict[str, Any] = {
        "format": SHARD_FORMAT, "source_config": config,
        "datamodule": f"{type(dm).__module__}.{type(dm).__qualname__}",
        "attributes": _datamodule_attributes(dm), "collate": _collate_name(dm), "splits": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            try:
                for split in splits:
                    torch.manual_seed(seed)
                    random.seed(seed)
                    stored, finish = _plan(datasets[split], seed)
                    writer = BinaryWriter(str(tmp / split), chunk_bytes=chunk_bytes)
                    keys: list[str] | None = None
                    first: dict[str, Any] = {}
                    for index in range(len(stored)):  # type: ignore[arg-type]
                        item = _check_sample(stored[index], index, split, keys)
                        if keys is None:
                            keys, first = sorted(item), item
                        writer[index] = _encode_strings(item)
                        if on_sample is not None:
                            on_sample(split, index)
                    if keys is None:
                        raise DataError(getattr(dm, "root", split), f"the {split} split has no samples to shard")
                    writer.done()
                    writer.merge()
                    finish["strings"] = sorted(k for k, v in first.items() if isinstance(v, str))
                    manifest["splits"][split] = {"samples": len(stored), "finish": finish,  # type: ignore[arg-type]
                                                 "sample": _describe(first)}
            finally:
                random.setstate(state)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():  # overwrite: move the old folder aside first, delete it once replaced
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _collate_name(dm: L.LightningDataModule) -> str:
    from maekit.datasets.pointcloud import PointCloudDataModule

    return "points" if isinstance(dm, PointCloudDataModule) else "default"


# ------------------------------------------------------------------------------ reading
def _is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


def read_manifest(root: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a shard folder (a local path or an `s3://` URL)."""
    root = str(root).rstrip("/")
    where = f"{root}/{MANIFEST}"
    if _is_remote(root):
        if not root.startswith("s3://"):
            raise ConfigError(f"{root}: only local folders and s3:// URLs are supported for shards")
        import boto3

        bucket, _, key = where.removeprefix("s3://").partition("/")
        try:
            body = boto3.client("s3", **(storage_options or {})).get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as err:  # botocore raises many kinds (no credentials, no such key, network)
            raise DataError(where, f"cannot be fetched: {err}") from err
        text = body.decode()
    else:
        path = Path(root.removeprefix("file://")) / MANIFEST
        if not path.is_file():
            raise DataError(path, "no shard manifest here; write shards with `maekit shard -c CONFIG --out DIR`")
        text = path.read_text()
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise DataError(where, f"is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS or "splits" not in manifest:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(where, f"is not a maekit shard manifest this version reads (format {found!r}; this "
                               f"version reads formats {', '.join(map(str, READABLE_FORMATS))})")
    return manifest


def _collate(kind: str) -> Callable[[list[dict[str, Any]]], Any]:
    if kind == "points":
        from maekit.datasets.pointcloud import collate_points

        return collate_points
    from torch.utils.data import default_collate

    return default_collate


class StreamingShardsDataModule(L.LightningDataModule):
    """Trains from shards written by `maekit shard`, streamed by litdata from a local folder or
    object storage (`s3://...`), with the attributes of the datamodule they came from.

    Args:
        root: the shard folder (holding `maekit_shards.json`).
        batch_size, num_workers: loader settings (default: the source datamodule's).
        shuffle: shuffle the training stream (litdata shuffles chunks, then samples in them).
        augment: apply the source's random training steps at stream time (see the module doc).
        cache_dir: where remote chunks are cached (default: litdata's).
        max_cache_size: the most the chunk cache may hold, e.g. "50GB".
        seed: shuffling seed.
        storage_options: passed to litdata (and boto3 for the manifest), e.g. an `endpoint_url`.
    """

    def __init__(self, root: str, batch_size: int | None = None, num_workers: int | None = None,
                 shuffle: bool = True, augment: bool = True, cache_dir: str | None = None,
                 max_cache_size: str = "50GB", seed: int = 0, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.root = str(root).rstrip("/")
        self.manifest = read_manifest(self.root, storage_options)
        attributes = self.manifest.get("attributes", {})
        for name in DATAMODULE_ATTRIBUTES:
            if name in attributes:
                setattr(self, name, attributes[name])
        self.batch_size = batch_size if batch_size is not None else int(attributes.get("batch_size", 32))
        self.num_workers = num_workers if num_workers is not None else int(attributes.get("num_workers", 0))
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.cache_dir, self.max_cache_size, self.storage_options = cache_dir, max_cache_size, storage_options
        self.datasets: dict[str, Any] = {}

    @property
    def num_classes(self) -> int:
        found = self.manifest.get("attributes", {}).get("num_classes")
        return int(found) if found is not None else len(getattr(self, "classes", []) or [])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def dataset(self, split: str, shuffle: bool = False, augment: bool = False) -> Any:
        """A litdata `StreamingDataset` over one split, finishing samples as the source would."""
        from litdata import StreamingDataset

        if split not in self.manifest["splits"]:
            raise DataError(f"{self.root}/{MANIFEST}", f"has no {split!r} split (it has {self.splits})")
        spec = self.manifest["splits"][split]["finish"]
        return StreamingDataset(f"{self.root}/{split}", cache_dir=self.cache_dir, shuffle=shuffle, seed=self.seed,
                                max_cache_size=self.max_cache_size, storage_options=self.storage_options or {},
                                transform=FinishSample(spec, augment))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split in self.splits:
            train = split == "train"
            self.datasets[split] = self.dataset(split, shuffle=train and self.shuffle, augment=train and self.augment)

    def _loader(self, split: str) -> Any:
        from litdata import StreamingDataLoader

        if split not in self.datasets:
            raise DataError(self.root, f"has no {split!r} split (it has {self.splits})")
        return StreamingDataLoader(self.datasets[split], batch_size=self.batch_size, num_workers=self.num_workers,
                                   collate_fn=_collate(self.manifest.get("collate", "default")),
                                   persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> Any:
        return self._loader("train")

    def val_dataloader(self) -> Any:
        return self._loader("val")

    def test_dataloader(self) -> Any:
        return self._loader("test" if "test" in self.datasets else "val")

    def predict_dataloader(self) -> Any:
        return self.test_dataloader()


# ------------------------------------------------------------------------------ CLI
def cmd_shard(argv: list[str]) -> int:
    """Convert a config's dataset into streaming shards once: `maekit shard -c CONFIG --out DIR
    [--data.* overrides]`; train from them with `--data maekit.datasets.shards.StreamingShardsDataModule
    --data.root DIR`."""
    p = argparse.ArgumentParser(prog="maekit shard", description=cmd_shard.__doc__)
    p.add_argument("-c", "--config", required=True, help="a Lightning CLI config with a data: section")
    p.add_argument("--out", required=True, help="shard folder to write (local; upload it to object storage after)")
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--chunk-bytes", default="64MB", help="size of each chunk file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices made while writing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard folder")
    a, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-") and not o.startswith("--data")]
    if bad:
        p.error(f"unrecognised arguments: {' '.join(bad)}")
    counts: dict[str, int] = {}

    def progress(split: str, index: int) -> None:
        counts[split] = index + 1
        if (index + 1) % 1000 == 0:
            print(f"  {split}: {index + 1} samples", flush=True)

    out = write_shards(a.config, a.out, a.splits, overrides, a.chunk_bytes, a.seed, a.overwrite, progress)
    manifest = read_manifest(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    parts = ", ".join(f"{s} {v['samples']}" for s, v in manifest["splits"].items())
    print(f"wrote {out}: {parts} samples, {size / 2**20:.1f} MiB ({manifest['datamodule']})")
    return 0


__all__ = ["StreamingShardsDataModule", "FinishSample", "cmd_shard", "datamodule_from_config", "read_manifest",
           "write_shards"]
