"""Streaming shards: convert any domain's dataset once into litdata chunks, then train from them.

    maekit shard -c naip/pretrain --out /data/naip_shards [--data.root DIR ...]
    maekit fit -c naip/pretrain --data maekit.data.StreamingShardsDataModule \
        --data.root /data/naip_shards          # or s3://bucket/naip_shards

Layout of a shard folder: `<split>/chunk-*.bin` + `<split>/index.json` (litdata's optimised
format, streamable from local disk or object storage, with DDP sharding and resumable loader
state) and `maekit_shards.json`, a manifest naming the source datamodule, the attributes models
read from it (bands, channels, modalities, classes), the sample count and the keys and dtypes of
a sample per split, and how to finish a stored sample at stream time.

What is stored is each sample's deterministic, pre-augmentation form, and the random parts of
the source's training pipeline run at stream time. This module knows no domain: a dataset that
has a `shard_plan(seed)` method (the `ShardableDataset` protocol) says what to store and names
the class that finishes a stored sample at stream time (each domain's datamodule module has
them: `FinishChip`, `FinishVolume`, `FinishPoints`...). Any other map-style dataset is stored
as it is (a warning says that augmentations are baked in). Manifests written before finishers
were named by import path name a `kind`, which the domain registry maps to its finisher.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from torch.utils.data import Dataset

from maekit.data.streaming import (DATAMODULE_ATTRIBUTES, MANIFEST, READABLE_FORMATS, FinishAsStored, FinishSample,
                                   StreamingShardsDataModule, read_manifest)
from maekit.errors import ConfigError, DataError

SHARD_FORMAT = 2  # 2: point clouds stored as a pool of up to POINT_POOL x num_points (see pointcloud)


# ------------------------------------------------------------------------------ source datamodule
def datamodule_from_config(config: str | Path, overrides: Sequence[str] = ()) -> L.LightningDataModule:
    """The datamodule of a Lightning CLI config's `data:` section, with `--data.*` overrides."""
    import yaml
    from jsonargparse import ArgumentParser

    from maekit.config_files import resolve_config

    path = Path(resolve_config(config))
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


# ------------------------------------------------------------------------------ plans and finishing
@runtime_checkable
class ShardableDataset(Protocol):
    """A dataset that knows how it is stored in shards."""

    def shard_plan(self, seed: int) -> tuple[Dataset, dict[str, Any]]:
        """(the dataset whose items are stored, the finishing spec: JSON-able, with `kind` and
        `finish`, the "module:Class" whose `Class(spec, augment)(item)` finishes a stored item)."""
        ...


def _plan(dataset: Dataset, seed: int) -> tuple[Dataset, dict[str, Any]]:
    """(the dataset whose items are stored, how to finish a stored item at stream time)."""
    if isinstance(dataset, ShardableDataset):
        return dataset.shard_plan(seed)
    warnings.warn(f"{type(dataset).__name__} is not a dataset maekit knows how to shard: its items are stored "
                  "as they come, so any random augmentation in it is baked into the shards", stacklevel=3)
    return dataset, {"kind": "plain", "finish": "maekit.data.streaming:FinishAsStored"}


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


# ------------------------------------------------------------------------------ CLI
def cmd_shard(argv: list[str]) -> int:
    """Convert a config's dataset into streaming shards once: `maekit shard -c CONFIG --out DIR
    [--data.* overrides]`; train from them with `--data maekit.data.StreamingShardsDataModule
    --data.root DIR`."""
    p = argparse.ArgumentParser(prog="maekit shard", description=cmd_shard.__doc__)
    p.add_argument("-c", "--config", required=True, help="a Lightning CLI config with a data: section (path or shipped name)")
    p.add_argument("--out", required=True, help="shard folder to write (local; upload it to object storage after)")
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--chunk-bytes", default="64MB", help="size of each chunk file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices made while writing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard folder")
    a, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-") and not o.startswith("--data")]
    if bad:
        p.error(f"unrecognised arguments: {' '.join(bad)}")
    from maekit.progress import progress

    bars: dict[str, Any] = {}

    def on_sample(split: str, index: int) -> None:
        if split not in bars:
            bars[split] = progress(desc=f"{split} samples", unit="sample")
        bars[split].update(1)

    try:
        out = write_shards(a.config, a.out, a.splits, overrides, a.chunk_bytes, a.seed, a.overwrite, on_sample)
    finally:
        for bar in bars.values():
            bar.close()
    manifest = read_manifest(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    parts = ", ".join(f"{s} {v['samples']}" for s, v in manifest["splits"].items())
    print(f"wrote {out}: {parts} samples, {size / 2**20:.1f} MiB ({manifest['datamodule']})")
    return 0


__all__ = ["StreamingShardsDataModule", "FinishSample", "cmd_shard", "datamodule_from_config", "read_manifest",
           "write_shards"]
