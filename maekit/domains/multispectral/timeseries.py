"""Reading time series of one place: a folder of dated chips, or one (T, C, H, W) stack.

Layouts (below `root`, or `root/<split>`, and `<class>/` folders for classification):
- `folders`: one folder per location holding one chip per date; the date is parsed from the
  file name (`2021-06-03`, `2021_06_03`, `20210603` or year + day of year `2021154`, as HLS
  names carry it) or, when the name has none, from the GeoTIFF tag `ACQUISITION_DATE` /
  `TIFFTAG_DATETIME`. Files are ordered by date.
- `stacks`: one file per location, a GeoTIFF of T x C bands (date-major: every band of the first
  date, then the second...) or an `.npz` with `image` (T, C, H, W); the dates come from a sidecar
  of the same stem (`.json`: `{"dates": [...]}` or a list; `.csv`: one date per line, an optional
  `date` header), else the GeoTIFF tag `DATES` (comma-separated) or the npz array `dates`. A date
  written as an empty string or `null` is a missing acquisition.

Every frame of a location must share the grid (size, CRS, transform) and band count: a
mismatch is one `DataError` naming the file. Missing or fully clouded dates become absent frames
(`date_present` False); a `cloud_band` (nonzero = cloud) marks cloudy pixels invalid.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioError
from torch.utils.data import Dataset

from maekit.data.base import MaekitDataModule
from maekit.domains.multispectral.readers import (ARRAY_SUFFIXES, RASTER_SUFFIXES, _valid_mask, _widen,
                                                  read_array_chip)
from maekit.domains.multispectral.spec import get_preset
from maekit.errors import ConfigError, DataError

Layout = Literal["folders", "stacks"]
TIME_SUFFIXES = RASTER_SUFFIXES + ARRAY_SUFFIXES
_YMD = re.compile(r"(?<!\d)((?:19|20)\d\d)[-_]?(0[1-9]|1[0-2])[-_]?(0[1-9]|[12]\d|3[01])(?!\d)")
_YDOY = re.compile(r"(?<!\d)((?:19|20)\d\d)(00[1-9]|0[1-9]\d|[12]\d\d|3[0-5]\d|36[0-6])(?!\d)")
_TAG_DATE = re.compile(r"((?:19|20)\d\d)[-:_/]?(\d\d)[-:_/]?(\d\d)")


def _ymd(year: int, month: int, day: int, source: str | Path) -> tuple[int, int]:
    try:
        d = dt.date(year, month, day)
    except ValueError as err:
        raise DataError(source, f"holds an impossible date {year}-{month:02d}-{day:02d}: {err}") from err
    return d.year, d.timetuple().tm_yday


def parse_date(text: str, source: str | Path) -> tuple[int, int]:
    """(year, day of year) of a date written `YYYY-MM-DD` (or `_`, no separator), `YYYYDDD`,
    or `YYYY:MM:DD hh:mm:ss` (TIFF); a `DataError` naming `source` when it is none of them."""
    text = text.strip()
    if m := _YMD.search(text):
        return _ymd(int(m[1]), int(m[2]), int(m[3]), source)
    if m := _YDOY.search(text):
        year, doy = int(m[1]), int(m[2])
        if doy > (366 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 365):
            raise DataError(source, f"day of year {doy} does not exist in {year}")
        return year, doy
    if m := _TAG_DATE.search(text):
        return _ymd(int(m[1]), int(m[2]), int(m[3]), source)
    raise DataError(source, f"date {text!r} does not parse; write YYYY-MM-DD, YYYYMMDD or YYYYDDD (year + day of year)")


def date_of_file(path: Path) -> tuple[int, int]:
    """The acquisition date of one chip: from its name, else its GeoTIFF date tag."""
    for pattern in (_YMD, _YDOY):
        if pattern.search(path.stem):
            return parse_date(path.stem, path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        try:
            with rasterio.open(path) as src:
                tags = src.tags()
        except RasterioError as err:
            raise DataError(path, f"cannot be opened as a raster: {err}") from err
        for key in ("ACQUISITION_DATE", "DATE", "TIFFTAG_DATETIME"):
            if tags.get(key):
                return parse_date(tags[key], path)
    raise DataError(path, "has no date in its name (YYYY-MM-DD, YYYYMMDD or YYYYDDD) and no ACQUISITION_DATE / "
                          "TIFFTAG_DATETIME tag")


def _parse_date_list(values: Sequence[Any], source: Path) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for v in values:
        out.append(None if v is None or str(v).strip().lower() in ("", "null", "none", "nan") else parse_date(str(v), source))
    return out


def stack_dates(path: Path) -> tuple[list[tuple[int, int] | None], Path]:
    """The dates of a stack file and where they were read (sidecar, tag or the npz itself)."""
    for suffix in (".json", ".csv"):
        sidecar = path.with_suffix(suffix)
        if not sidecar.exists():
            continue
        try:
            if suffix == ".json":
                data = json.loads(sidecar.read_text())
                values = data.get("dates") if isinstance(data, dict) else data
                if not isinstance(values, list):
                    raise DataError(sidecar, "must hold a list of dates or {\"dates\": [...]}")
            else:
                rows = [r for r in csv.reader(sidecar.read_text().splitlines()) if r]
                if rows and rows[0][0].strip().lower() == "date":
                    rows = rows[1:]
                values = [r[0] for r in rows]
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(sidecar, f"cannot be read as a dates sidecar: {err}") from err
        return _parse_date_list(values, sidecar), sidecar
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "dates" in archive:
                values = [str(v) for v in archive["dates"].tolist()]
                return _parse_date_list(values, path), path
    elif path.suffix.lower() in RASTER_SUFFIXES:
        try:
            with rasterio.open(path) as src:
                tag = src.tags().get("DATES")
        except RasterioError as err:
            raise DataError(path, f"cannot be opened as a raster: {err}") from err
        if tag is not None:
            return _parse_date_list(tag.split(","), path), path
    raise DataError(path, f"has no dates: write {path.with_suffix('.json').name} ({{\"dates\": [...]}}) or "
                          f"{path.with_suffix('.csv').name}, or a DATES tag")


@dataclass
class Series:
    """One location: `image` (T, C, H, W), `valid` (T, H, W), `dates` (T, 2), `present` (T,),
    `latlon` (2,) degrees or None."""

    image: np.ndarray
    valid: np.ndarray
    dates: np.ndarray
    present: np.ndarray
    latlon: np.ndarray | None


def _latlon(crs: Any, transform: Any, height: int, width: int) -> np.ndarray | None:
    """Latitude/longitude (degrees) of the chip centre, from its CRS and transform."""
    if crs is None or transform is None:
        return None
    from rasterio.warp import transform as warp

    x, y = transform * (width / 2.0, height / 2.0)
    lon, lat = warp(crs, "EPSG:4326", [x], [y])
    return np.array([lat[0], lon[0]], dtype=np.float32)


def _grid_of(src: Any) -> tuple[Any, ...]:
    return (src.count, src.height, src.width, src.crs.to_string() if src.crs else None, tuple(src.transform)[:6])


def read_series(sample: Path, layout: Layout, file_bands: Sequence[str], band_index: Sequence[int],
                nodata: float | None, cloud_index: int | None) -> Series:
    """Read one location (a folder of dated chips, or a stack file)."""
    frames: list[np.ndarray] = []
    dates: list[tuple[int, int] | None] = []
    crs = transform = None
    count = len(file_bands)
    if layout == "folders":
        files = sorted((p for p in sample.iterdir() if p.is_file() and p.suffix.lower() in TIME_SUFFIXES),
                       key=lambda p: (date_of_file(p), p.name))
        if not files:
            raise DataError(sample, f"holds no dated chips ({', '.join(TIME_SUFFIXES)})")
        first_grid = None
        for f in files:
            dates.append(date_of_file(f))
            if f.suffix.lower() in ARRAY_SUFFIXES:
                data = read_array_chip(f, list(file_bands), nodata=nodata).image
                grid: tuple[Any, ...] = (data.shape[0], *data.shape[1:], None, None)
                fill = nodata
            else:
                try:
                    with rasterio.open(f) as src:
                        grid = _grid_of(src)
                        data = src.read()
                        crs, transform = src.crs, src.transform
                        fill = nodata if nodata is not None else src.nodata
                except RasterioError as err:
                    raise DataError(f, f"cannot be read as a raster: {err}") from err
            if first_grid is None:
                first_grid = (f, grid)
            elif grid != first_grid[1]:
                what = ("band count" if grid[0] != first_grid[1][0] else "size" if grid[1:3] != first_grid[1][1:3]
                        else "CRS" if grid[3] != first_grid[1][3] else "transform")
                raise DataError(f, f"does not match {first_grid[0].name} of the same location: {what} differs "
                                   f"({grid[:4]} vs {first_grid[1][:4]}); every date of a location must share one grid")
            if data.shape[0] != count:
                raise DataError(f, f"has {data.shape[0]} bands but the configuration describes {count} ({list(file_bands)})")
            frames.append(data)
        stack = np.stack(frames)
    else:
        found, where = stack_dates(sample)
        if sample.suffix == ".npz":
            with np.load(sample, allow_pickle=False) as archive:
                if "image" not in archive:
                    raise DataError(sample, f"has no 'image' array (it has {list(archive.keys())})")
                stack = archive["image"]
            if stack.ndim != 4:
                raise DataError(sample, f"holds an image of shape {stack.shape}; expected (dates, bands, height, width)")
            fill = nodata
        else:
            try:
                with rasterio.open(sample) as src:
                    data = src.read()
                    crs, transform = src.crs, src.transform
                    fill = nodata if nodata is not None else src.nodata
            except RasterioError as err:
                raise DataError(sample, f"cannot be read as a raster: {err}") from err
            if data.shape[0] % count:
                raise DataError(sample, f"has {data.shape[0]} bands, not a whole number of dates of {count} bands "
                                        f"({list(file_bands)})")
            stack = data.reshape(data.shape[0] // count, count, *data.shape[1:])
        if len(found) != stack.shape[0]:
            raise DataError(where, f"lists {len(found)} dates but {sample.name} holds {stack.shape[0]} dates of "
                                   f"{count} bands")
        if stack.shape[1] != count:
            raise DataError(sample, f"has {stack.shape[1]} bands per date but the configuration describes {count}")
        dates = found
    valid = np.stack([_valid_mask(sample, frame, fill) for frame in stack])
    if cloud_index is not None:
        valid &= stack[:, cloud_index] == 0
    present = np.array([d is not None for d in dates]) & valid.reshape(len(dates), -1).any(1)
    date_arr = np.array([d if d is not None else (0, 0) for d in dates], dtype=np.int64).reshape(-1, 2)
    image = _widen(np.ascontiguousarray(stack[:, list(band_index)]))
    return Series(image, valid, date_arr, present, _latlon(crs, transform, *stack.shape[-2:]))


def list_series(folder: Path, layout: Layout) -> list[Path]:
    """The locations below `folder`: folders holding chips (`folders`) or stack files (`stacks`)."""
    if layout == "stacks":
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TIME_SUFFIXES)
    return sorted({p.parent for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TIME_SUFFIXES})


class TimeSeriesDataset(Dataset):
    """Locations as fixed-length series of `num_frames` dates.

    A location with more dates keeps `num_frames` of them (a random sorted subset in training,
    evenly spaced otherwise); one with fewer is padded with absent dates. `single_date` keeps one
    present date (random in training, the middle present one otherwise): the single-date
    baseline on the same data. Items: `image` (T, C, H, W), `valid` (T, H, W), `dates` (T, 2),
    `date_present` (T,), `latlon` (2,) when `location`, `label`, `path`.
    """

    def __init__(self, samples: Sequence[Path], layout: Layout, file_bands: Sequence[str], bands: Sequence[str],
                 num_frames: int, labels: Sequence[int] | None = None, nodata: float | None = None,
                 cloud_band: str | None = None, train: bool = False, location: bool = False,
                 single_date: bool = False) -> None:
        self.samples, self.layout, self.file_bands = list(samples), layout, list(file_bands)
        self.band_index = [self.file_bands.index(b) for b in bands]
        self.cloud_index = self.file_bands.index(cloud_band) if cloud_band else None
        self.num_frames, self.labels, self.nodata = num_frames, labels, nodata
        self.train, self.location, self.single_date = train, location, single_date

    def __len__(self) -> int:
        return len(self.samples)

    def _choose(self, present: np.ndarray) -> list[int]:
        total = len(present)
        if self.single_date:
            have = [i for i in range(total) if present[i]] or [0]
            return [random.choice(have) if self.train else have[len(have) // 2]]
        if total <= self.num_frames:
            return list(range(total))
        if self.train:
            return sorted(random.sample(range(total), self.num_frames))
        return [round(i * (total - 1) / (self.num_frames - 1)) for i in range(self.num_frames)] if self.num_frames > 1 else [0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.samples[index]
        s = read_series(path, self.layout, self.file_bands, self.band_index, self.nodata, self.cloud_index)
        keep = self._choose(s.present)
        t = 1 if self.single_date else self.num_frames
        pad = t - len(keep)
        image = np.concatenate([s.image[keep], np.zeros((pad, *s.image.shape[1:]), s.image.dtype)])
        valid = np.concatenate([s.valid[keep], np.zeros((pad, *s.valid.shape[1:]), bool)])
        dates = np.concatenate([s.dates[keep], np.zeros((pad, 2), np.int64)])
        present = np.concatenate([s.present[keep], np.zeros(pad, bool)])
        item: dict[str, Any] = {"image": torch.from_numpy(image), "valid": torch.from_numpy(valid),
                                "dates": torch.from_numpy(dates), "date_present": torch.from_numpy(present),
                                "path": str(path)}
        if self.location:
            if s.latlon is None:
                raise DataError(path, "has no CRS and transform, so no latitude/longitude (set location: false)")
            item["latlon"] = torch.from_numpy(s.latlon)
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[index], dtype=torch.long)
        return item


class TimeSeriesDataModule(MaekitDataModule):
    """Time series of chips for pretraining or classification.

    Args:
        root: the dataset folder (`train`/`val` split folders optional; `<class>/` folders for
            classification).
        layout: `folders` (a folder of dated chips per location) or `stacks` (one file per location).
        preset: sensor defaults for `file_bands` and nodata.
        file_bands: names of the bands of each date, in order.
        bands: bands given to the model (default all but `cloud_band`).
        num_frames: T, dates per sample (more are subsampled, fewer padded as absent).
        task: `pretrain` or `classification`.
        cloud_band: a band of the files whose nonzero pixels are cloud (marked invalid).
        location: hand `latlon` (from the chips' CRS) to the model.
        single_date: one date per sample (the single-date baseline).
        batch_size, num_workers, val_fraction, labels_per_class, nodata, seed: as `ChipDataModule`.
    """

    def __init__(
        self,
        root: str,
        layout: Layout = "folders",
        preset: Literal["naip", "sentinel2", "toa", "rgb"] | None = "naip",
        file_bands: list[str] | None = None,
        bands: list[str] | None = None,
        num_frames: int = 4,
        task: Literal["pretrain", "classification"] = "pretrain",
        cloud_band: str | None = None,
        location: bool = False,
        single_date: bool = False,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        labels_per_class: int | None = None,
        nodata: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if layout not in ("folders", "stacks"):
            raise ConfigError(f"layout must be folders or stacks, not {layout!r}")
        p = get_preset(preset) if preset else None
        self.root, self.layout = Path(root), layout
        self.file_bands = list(file_bands) if file_bands is not None else (list(p.bands) if p else [])
        if not self.file_bands:
            raise ConfigError("TimeSeriesDataModule needs `file_bands` or a `preset`")
        if cloud_band is not None and cloud_band not in self.file_bands:
            raise ConfigError(f"cloud_band {cloud_band!r} is not one of the file bands {self.file_bands}")
        self.bands = list(bands) if bands is not None else [b for b in self.file_bands if b != cloud_band]
        for b in self.bands:
            if b not in self.file_bands:
                raise ConfigError(f"unknown band {b!r}; the files' bands are {self.file_bands}")
        if num_frames < 1:
            raise ConfigError(f"num_frames must be at least 1, got {num_frames}")
        self.num_frames, self.task, self.cloud_band = num_frames, task, cloud_band
        self.location, self.single_date = location, single_date
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.labels_per_class, self.seed = val_fraction, labels_per_class, seed
        self.nodata = nodata if nodata is not None else (p.nodata if p else None)
        self.classes: list[str] = []

    def _collect(self, folder: Path) -> tuple[list[Path], list[int] | None]:
        if self.task != "classification":
            return list_series(folder, self.layout), None
        class_dirs = sorted(d for d in folder.iterdir() if d.is_dir())
        if not self.classes:
            self.classes = [d.name for d in class_dirs]
        samples, labels = [], []
        for d in class_dirs:
            if d.name not in self.classes:
                raise DataError(d, f"class folder not among the training classes {self.classes}")
            found = list_series(d, self.layout)
            samples += found
            labels += [self.classes.index(d.name)] * len(found)
        return samples, labels

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist")
        parts: dict[str, tuple[list[Path], list[int] | None]] = {}
        if (self.root / "train").is_dir():
            for name in ("train", "val", "test"):
                if (self.root / name).is_dir():
                    parts[name] = self._collect(self.root / name)
        if "val" not in parts:
            samples, labels = parts.pop("train") if "train" in parts else self._collect(self.root)
            for name, idx in zip(("val", "train"), self.seeded_split(range(len(samples)), self.val_fraction)):
                parts[name] = ([samples[i] for i in idx], None if labels is None else [labels[i] for i in idx])
        if not parts.get("train", ([],))[0]:
            raise DataError(self.root, f"no time series ({self.layout} layout) found for training")
        if self.labels_per_class is not None and parts["train"][1] is not None:
            keep = self.per_class_subset(parts["train"][1], self.labels_per_class)
            parts["train"] = ([parts["train"][0][i] for i in keep], [parts["train"][1][i] for i in keep])
        for name, (samples, labels) in parts.items():
            self.datasets[name] = TimeSeriesDataset(
                samples, self.layout, self.file_bands, self.bands, self.num_frames, labels, self.nodata,
                self.cloud_band, train=name == "train", location=self.location, single_date=self.single_date)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
