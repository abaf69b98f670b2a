"""Mixed-sensor chips in one run: several roots, each of its own sensor, batched one sensor at a time.

    data:
      class_path: maekit.domains.multispectral.MultiSensorDataModule
      init_args:
        sources:
          - {root: data/naip_chips, sensor: naip}
          - {root: data/s2_chips, sensor: sentinel2}
          - {root: data/my_drone, sensor: sensors/my_drone.yaml, stats: compute}

Each source is a chip folder in one of `ChipDataModule`'s layouts, read with its sensor's band
names (a preset name or a sensor YAML, `maekit.domains.multispectral.sensors.load_sensor`).
Batches are homogeneous per source (`maekit.data.buckets`: shuffled within a source, source
batches interleaved, seeded, DDP-sharded, resumable), so band count and chip size are static
within a batch while sources differ. A batch is the any-sensor contract's dict:

- `image` (B, C, H, W) float32 in physical units (the sensor's `raw * scale + offset`),
- `wavelengths`, `bandwidths` (C,) float nm; `bands` list of C names; `sensor` name; `gsd_m`,
- `mean`, `std` (C,) per-band statistics in physical units: the sensor's own (`stats: sensor`)
  or computed over the source's training chips (`stats: compute`),
- `valid` (B, H, W) bool where a pixel holds data (every source has it, all True without
  nodata); `label` (B,) for classification; `path`.

Every source's files are checked at `setup` (header reads): a file with another band count than
its sensor has, an unknown sensor, a missing or empty root is one error naming the file or root.
"""

from __future__ import annotations

import bisect
import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maekit.data.base import MaekitDataModule, worker_count
from maekit.data.buckets import BucketBatchSampler, BucketedResumableLoader
from maekit.domains.multispectral.datamodule import ChipDataModule, ChipDataset
from maekit.domains.multispectral.readers import chip_band_count
from maekit.domains.multispectral.sensors import SensorSpec, load_sensor
from maekit.domains.multispectral.spec import PRESETS
from maekit.domains.multispectral.stats import chip_statistics
from maekit.errors import ConfigError, DataError

StatsKind = Literal["sensor", "compute"]
_SOURCE_KEYS = {"root", "sensor", "bands", "stats", "crop_size"}


@dataclass(frozen=True)
class SourceInfo:
    """What the collate attaches to every batch of one source (the contract's metadata)."""

    sensor: str
    bands: tuple[str, ...]
    wavelengths: tuple[float, ...]
    bandwidths: tuple[float, ...]
    gsd_m: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]


class SensorChips(Dataset):
    """The chips of several sources one after the other; items carry their `source` index."""

    def __init__(self, parts: Sequence[ChipDataset]) -> None:
        self.parts = list(parts)
        self.starts = [0]
        for part in self.parts:
            self.starts.append(self.starts[-1] + len(part))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        source = bisect.bisect_right(self.starts, index) - 1
        item = self.parts[source][index - self.starts[source]]
        item["source"] = source
        return item

    def buckets(self) -> list[list[int]]:
        """Dataset indices of each source (one bucket per source)."""
        return [list(range(a, b)) for a, b in zip(self.starts[:-1], self.starts[1:])]

    def without_augmentation(self) -> SensorChips:
        """A copy with centre crops and no flips (frozen-feature evaluation)."""
        parts = []
        for part in self.parts:
            plain = copy.copy(part)
            plain.random_crop, plain.flips = False, False
            parts.append(plain)
        return SensorChips(parts)


class SensorCollate:
    """Stack one source's items into the contract's batch dict (see the module doc); a list
    mixing sources is refused (it means the loader was built without the bucketing sampler)."""

    def __init__(self, sources: Sequence[SourceInfo]) -> None:
        self.sources = list(sources)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        which = sorted({int(item["source"]) for item in items})
        if len(which) != 1:
            sensors = [self.sources[s].sensor for s in which]
            raise DataError(items[0].get("path", "?"), f"a batch mixes sensors {sensors}; "
                            "mixed-sensor batches need the bucketing sampler (MultiSensorDataModule's loaders)")
        info = self.sources[which[0]]
        scale = torch.tensor(info.scale, dtype=torch.float32)[:, None, None]
        offset = torch.tensor(info.offset, dtype=torch.float32)[:, None, None]
        image = torch.stack([item["image"] for item in items]).float()
        batch: dict[str, Any] = {
            "image": image * scale + offset,
            "wavelengths": torch.tensor(info.wavelengths, dtype=torch.float32),
            "bandwidths": torch.tensor(info.bandwidths, dtype=torch.float32),
            "bands": list(info.bands), "sensor": info.sensor, "gsd_m": float(info.gsd_m),
            "mean": torch.tensor(info.mean, dtype=torch.float32), "std": torch.tensor(info.std, dtype=torch.float32),
            "path": [item["path"] for item in items],
        }
        for key in ("valid", "label", "mask"):
            if key in items[0]:
                batch[key] = torch.stack([item[key] for item in items])
        return batch


class MultiSensorDataModule(MaekitDataModule):
    """Chip folders of several sensors for one pretraining (or probing) run.

    Args:
        sources: one mapping per root: `root` (a chip folder), `sensor` (a preset name such as
            `naip`, `sentinel2`, `landsat8`, or a sensor YAML file), optional `bands` (a subset
            of the sensor's bands, by name), `stats` (`sensor` or `compute`, overriding the
            argument below) and `crop_size` (overriding the one below: sensors of different
            GSD usually have different chip sizes).
        task: `pretrain` (every chip below each root) or `classification` (class folders; every
            source must have the same classes).
        batch_size, num_workers: loader settings (each batch is one source's).
        val_fraction: share of each root's files for validation when it has no `val` folder.
        labels_per_class: keep this many training chips per class in each source.
        crop_size: random crop (train) / centre crop (val); None: the chips' own size.
        flips: random flips in training.
        stats: `sensor`: the sensor's published statistics (an error names a sensor without
            them); `compute`: mean/std over the source's training chips (up to `stats_files`).
        stats_files: at most this many chips read per source for `stats: compute`.
        seed: the splits' and subsets' seed (the batch order follows the run's seed).
    """

    def __init__(
        self,
        sources: list[dict[str, Any]],
        task: Literal["pretrain", "classification"] = "pretrain",
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        labels_per_class: int | None = None,
        crop_size: int | None = None,
        flips: bool = True,
        stats: StatsKind = "sensor",
        stats_files: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not sources:
            raise ConfigError("MultiSensorDataModule needs at least one source ({root, sensor})")
        self.sources = [self._check_source(i, s) for i, s in enumerate(sources)]
        self.root = ", ".join(str(s["root"]) for s in self.sources)
        self.task, self.batch_size, self.num_workers = task, batch_size, num_workers
        self.val_fraction, self.labels_per_class = val_fraction, labels_per_class
        self.crop_size, self.flips, self.stats, self.stats_files, self.seed = crop_size, flips, stats, stats_files, seed
        self.infos: list[SourceInfo] = []
        self.classes: list[str] = []
        #: no single band list: every batch names its own (`bands`, `wavelengths`)
        self.bands = None

    @staticmethod
    def _check_source(i: int, source: Any) -> dict[str, Any]:
        if not isinstance(source, dict) or "root" not in source or "sensor" not in source:
            raise ConfigError(f"sources[{i}] must be a mapping with `root` and `sensor`, got {source!r}")
        unknown = sorted(set(source) - _SOURCE_KEYS)
        if unknown:
            raise ConfigError(f"sources[{i}] ({source['root']}): unknown keys {unknown}; a source has "
                              f"{sorted(_SOURCE_KEYS)}")
        if source.get("stats", "sensor") not in ("sensor", "compute"):
            raise ConfigError(f"sources[{i}] ({source['root']}): stats must be 'sensor' or 'compute', "
                              f"got {source['stats']!r}")
        return dict(source)

    def _sensor(self, i: int) -> SensorSpec:
        source = self.sources[i]
        try:
            sensor = load_sensor(source["sensor"])
        except ConfigError as err:
            raise ConfigError(f"sources[{i}] ({source['root']}): {err}") from None
        if sensor.gsd_m is None:
            raise ConfigError(f"sources[{i}] ({source['root']}): sensor {source['sensor']!r} gives no gsd_m; "
                              "mixed-sensor batches carry each sensor's ground sample distance")
        return sensor

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        parts: dict[str, list[ChipDataset]] = {}
        infos: list[SourceInfo] = []
        for i, source in enumerate(self.sources):
            sensor = self._sensor(i)
            preset = PRESETS.get(sensor.name)
            chips = ChipDataModule(
                str(source["root"]), preset=None, file_bands=sensor.band_names, bands=source.get("bands"),
                task=self.task, batch_size=self.batch_size, val_fraction=self.val_fraction,
                labels_per_class=self.labels_per_class, crop_size=source.get("crop_size", self.crop_size),
                flips=self.flips, nodata=preset.nodata if preset is not None else None, mask_nodata=True,
                seed=self.seed)
            try:
                chips.setup("fit")
            except ConfigError as err:
                raise ConfigError(f"sources[{i}] ({source['root']}): {err}") from None
            self._check_band_counts(chips, sensor, str(source["sensor"]))
            if self.task == "classification":
                if not self.classes:
                    self.classes = list(chips.classes)
                elif chips.classes != self.classes:
                    raise DataError(source["root"], f"has classes {chips.classes} but {self.sources[0]['root']} has "
                                                    f"{self.classes}: every source needs the same class folders")
            infos.append(self._info(i, sensor, chips))
            for split, dataset in chips.datasets.items():
                parts.setdefault(split, []).append(dataset)
        for split, datasets in parts.items():
            if len(datasets) == len(self.sources):  # a split every source has (test only where all do)
                self.datasets[split] = SensorChips(datasets)
        self.infos = infos

    @staticmethod
    def _check_band_counts(chips: ChipDataModule, sensor: SensorSpec, given: str) -> None:
        """Every file has the sensor's band count (header reads), else an error naming the file."""
        want = len(sensor.bands)
        for dataset in chips.datasets.values():
            for path in dataset.files:
                count = chip_band_count(path)
                if count != want:
                    raise DataError(path, f"has {count} bands but its source's sensor {given!r} has {want} "
                                          f"({sensor.band_names}): is it under the right root?")

    def _info(self, i: int, sensor: SensorSpec, chips: ChipDataModule) -> SourceInfo:
        index = [sensor.band_names.index(b) for b in chips.bands]

        def pick(values: Sequence[float] | None, default: float) -> tuple[float, ...]:
            return tuple(float(values[j]) for j in index) if values is not None else tuple(default for _ in index)

        scale, offset = pick(sensor.scale, 1.0), pick(sensor.offset, 0.0)
        kind = self.sources[i].get("stats", self.stats)
        if kind == "sensor":
            if sensor.mean is None or sensor.std is None:
                raise ConfigError(f"sources[{i}] ({self.sources[i]['root']}): sensor {self.sources[i]['sensor']!r} "
                                  "gives no mean/std; set `stats: compute` for this source (or add them to its YAML)")
            mean, std = pick(sensor.mean, 0.0), pick(sensor.std, 1.0)
        else:
            m, s, count, _ = chip_statistics(chips.datasets["train"], np.array(scale), np.array(offset),
                                             self.stats_files)
            if count == 0:
                raise DataError(self.sources[i]["root"], "no valid pixel to compute statistics from")
            flat = [chips.bands[j] for j in np.flatnonzero(s <= 0)]
            if flat:
                raise DataError(self.sources[i]["root"], f"bands {flat} are constant over the training chips: "
                                                         "no std to normalise with")
            mean, std = tuple(m.tolist()), tuple(s.tolist())
        bands = sensor.select(chips.bands)
        gsd = float(sensor.gsd_m)  # type: ignore[arg-type]  # checked in `_sensor`
        return SourceInfo(sensor.name, tuple(chips.bands), tuple(b.wavelength_nm for b in bands),
                          tuple(b.bandwidth_nm for b in bands), gsd, mean, std, scale, offset)

    # ------------------------------------------------------------------ loaders
    @property
    def collate_fn(self) -> SensorCollate:
        if not self.infos:
            raise ConfigError("MultiSensorDataModule: call setup() before asking for loaders")
        return SensorCollate(self.infos)

    def loader(self, name: str) -> DataLoader:
        """An evaluation loader over split `name`: each source in order, one source per batch."""
        dataset: SensorChips = self.split_dataset(name)  # type: ignore[assignment]
        workers = worker_count(self.num_workers)
        sampler = BucketBatchSampler(dataset.buckets(), self.eval_batch_size, shuffle=False)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=self.collate_fn,
                          persistent_workers=workers > 0)

    def train_dataloader(self) -> BucketedResumableLoader:
        train: SensorChips = self.split_dataset("train")  # type: ignore[assignment]
        full = getattr(self, "full_pass", False)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # the run's seed_everything, the same on every rank
        return BucketedResumableLoader(train, train.buckets(), self.batch_size, worker_count(self.num_workers),
                                       drop_last=self.drop_last_train and not full, collate_fn=self.collate_fn,
                                       pin_memory=torch.cuda.is_available(), seed=seed,
                                       trainer=getattr(self, "trainer", None))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> list[str]:
        """One line per source: sensor, bands, chips per split, statistics."""
        lines = []
        for i, (source, info) in enumerate(zip(self.sources, self.infos)):
            counts = {k: len(v.parts[i]) for k, v in self.datasets.items()}  # type: ignore[attr-defined]
            lines.append(f"{info.sensor:>12s}: {len(info.bands)} bands {','.join(info.bands)} at {info.gsd_m:g} m, "
                         f"chips {counts}, root {source['root']}")
        return lines
