"""Reading raster chips and windows with rasterio (GeoTIFF), numpy (.npy/.npz) or Pillow
(JPEG/PNG photos: EuroSAT RGB, UC Merced, RESISC45 are distributed that way).

Every reader validates what it reads and raises one `DataError` naming the file and the problem.
Values are returned in their stored dtype (uint8/int16/...); conversion to float happens on the
model side.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from maekit.errors import DataError
from maekit.files import atomic_output

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
ARRAY_SUFFIXES = (".npy", ".npz")
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Pillow image modes read as they are stored: grey, RGB, RGB + alpha, 16/32-bit grey
_PICTURE_MODES = {"L": 1, "RGB": 3, "RGBA": 4, "I;16": 1, "I": 1}

# dtypes torch cannot hold are widened once here, losslessly
_WIDEN = {np.dtype("uint16"): np.int32, np.dtype("uint32"): np.int64, np.dtype("int8"): np.int16}


@dataclass
class Chip:
    """Pixels of one chip: `image` (C, H, W) in a torch-friendly stored dtype, `valid` (H, W) bool."""

    image: np.ndarray
    valid: np.ndarray


def resolve_band_indexes(path: str | Path, file_bands: Sequence[str], wanted: Sequence[str | int] | None,
                         count: int) -> list[int]:
    """0-based file band indexes of `wanted` (names from `file_bands`, or 1-based integers)."""
    if count != len(file_bands):
        raise DataError(path, f"has {count} bands but the configuration describes {len(file_bands)} "
                              f"({list(file_bands)}); set `file_bands` to the file's band names")
    if wanted is None:
        return list(range(count))
    out = []
    for band in wanted:
        if isinstance(band, int) or (isinstance(band, str) and band.isdigit()):
            i = int(band)
            if not 1 <= i <= count:
                raise DataError(path, f"band index {i} is out of range 1..{count}")
            out.append(i - 1)
        elif band in file_bands:
            out.append(list(file_bands).index(band))
        else:
            raise DataError(path, f"unknown band {band!r}; the file's bands are {list(file_bands)}")
    return out


def _widen(array: np.ndarray) -> np.ndarray:
    target = _WIDEN.get(array.dtype)
    return array.astype(target) if target is not None else array


def _valid_mask(path: str | Path, data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(H, W) True where every band holds data; NaN counts as nodata only if declared so."""
    valid = np.ones(data.shape[1:], dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        nan_is_nodata = nodata is not None and np.isnan(nodata)
        if not finite.all() and not nan_is_nodata:
            bad = int((~finite).sum())
            raise DataError(path, f"contains {bad} NaN/inf values and declares no NaN nodata; "
                                  "fix the file or set `nodata: .nan`")
        valid &= finite.all(0)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~(data == nodata).all(0)
    return valid


def read_raster(
    path: str | Path,
    file_bands: Sequence[str],
    bands: Sequence[str | int] | None = None,
    window: Window | None = None,
    nodata: float | None = None,
    dataset: rasterio.DatasetReader | None = None,
) -> Chip:
    """Read `bands` of a raster (optionally a window of it) with a validity mask.

    Args:
        path: the file (used for messages; opened unless `dataset` is given).
        file_bands: names of the file's bands in order.
        bands: names or 1-based indexes to read (default all).
        window: pixel window; must lie inside the raster.
        nodata: overrides the file's nodata value.
        dataset: an already open rasterio dataset (keeps handles open across reads).
    """
    try:
        src = dataset if dataset is not None else rasterio.open(path)
    except RasterioError as err:
        raise DataError(path, f"cannot be opened as a raster: {err}") from err
    try:
        indexes = resolve_band_indexes(path, file_bands, bands, src.count)
        if window is not None:
            if (window.col_off < 0 or window.row_off < 0 or window.col_off + window.width > src.width
                    or window.row_off + window.height > src.height):
                raise DataError(path, f"window {window} lies outside the raster ({src.width}x{src.height})")
        try:
            data = src.read([i + 1 for i in indexes], window=window)
        except RasterioError as err:
            raise DataError(path, f"is corrupt or truncated, reading failed: {err}") from err
        fill = nodata if nodata is not None else src.nodata
    finally:
        if dataset is None:
            src.close()
    valid = _valid_mask(path, data, fill)
    return Chip(image=_widen(data), valid=valid)


def read_array_chip(path: str | Path, file_bands: Sequence[str], bands: Sequence[str | int] | None = None,
                    nodata: float | None = None, key: str = "image") -> Chip:
    """Read a (C, H, W) chip stored as `.npy`, or as `.npz` under `key` (or its only array)."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.keys())
                if key in names:
                    data = archive[key]
                elif len(names) == 1:
                    data = archive[names[0]]
                else:
                    raise DataError(path, f"has arrays {names}; none is called {key!r}")
        else:
            data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(path, f"cannot be read as a numpy array: {err}") from err
    if data.ndim != 3:
        raise DataError(path, f"holds an array of shape {data.shape}; expected (bands, height, width)")
    indexes = resolve_band_indexes(path, file_bands, bands, data.shape[0])
    data = data[indexes]
    return Chip(image=_widen(np.ascontiguousarray(data)), valid=_valid_mask(path, data, nodata))


def _open_picture(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(path, f"cannot be read as a JPEG/PNG picture: {err}") from err


def read_picture_chip(path: str | Path, file_bands: Sequence[str], bands: Sequence[str | int] | None = None,
                      nodata: float | None = None) -> Chip:
    """Read a JPEG/PNG chip with Pillow as (C, H, W) in its stored type (uint8 for 8-bit pictures;
    grey pictures have one band, RGB three, RGBA four; palette pictures are expanded to RGB)."""
    path = Path(path)
    with _open_picture(path) as picture:
        try:
            if picture.mode == "P":  # a palette indexes colours: the colours are the data
                picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
            if picture.mode not in _PICTURE_MODES:
                raise DataError(path, f"has Pillow mode {picture.mode!r}; read are {sorted(_PICTURE_MODES)} and palette")
            data = np.asarray(picture)
        except OSError as err:  # truncated files fail when the pixels are decoded
            raise DataError(path, f"is corrupt or truncated, decoding failed: {err}") from err
    data = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
    indexes = resolve_band_indexes(path, file_bands, bands, data.shape[0])
    data = np.ascontiguousarray(data[indexes])
    return Chip(image=_widen(data), valid=_valid_mask(path, data, nodata))


def chip_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a chip file, from its header only."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICTURE_SUFFIXES:
        with _open_picture(path) as picture:
            return picture.height, picture.width
    if suffix == ".npy":
        shape = _npy_chip_shape(path)
        return int(shape[1]), int(shape[2])
    if suffix == ".npz":
        image = read_array_chip(path, ["?"] * _npz_bands(path)).image
        return int(image.shape[1]), int(image.shape[2])
    try:
        with rasterio.open(path) as src:
            return src.height, src.width
    except RasterioError as err:
        raise DataError(path, f"cannot be opened as a raster: {err}") from err


def _npy_chip_shape(path: Path) -> tuple[int, ...]:
    """The (bands, height, width) shape of a `.npy` chip, read from its header only."""
    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot be read as a numpy array: {err}") from err
    if len(shape) != 3:
        raise DataError(path, f"holds an array of shape {shape}; expected (bands, height, width)")
    return tuple(int(v) for v in shape)


def chip_band_count(path: str | Path) -> int:
    """Number of bands of a chip file, from its header where the format has one."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICTURE_SUFFIXES:
        with _open_picture(path) as picture:
            if picture.mode == "P":  # palette pictures are read expanded to RGB (RGBA with transparency)
                return 4 if "transparency" in picture.info else 3
            return _PICTURE_MODES.get(picture.mode, len(picture.getbands()))
    if suffix == ".npy":
        return int(_npy_chip_shape(path)[0])
    if suffix == ".npz":
        return _npz_bands(path)
    try:
        with rasterio.open(path) as src:
            return int(src.count)
    except RasterioError as err:
        raise DataError(path, f"cannot be opened as a raster: {err}") from err


def _npz_bands(path: Path) -> int:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.keys())
            data = archive["image"] if "image" in names else archive[names[0]]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, IndexError) as err:
        raise DataError(path, f"cannot be read as a numpy array: {err}") from err
    if data.ndim != 3:
        raise DataError(path, f"holds an array of shape {data.shape}; expected (bands, height, width)")
    return int(data.shape[0])


def read_chip(path: str | Path, file_bands: Sequence[str], bands: Sequence[str | int] | None = None,
              nodata: float | None = None) -> Chip:
    """Read a whole chip file of any supported kind, refusing one with no valid pixel."""
    suffix = Path(path).suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        chip = read_array_chip(path, file_bands, bands, nodata)
    elif suffix in PICTURE_SUFFIXES:
        chip = read_picture_chip(path, file_bands, bands, nodata)
    else:
        chip = read_raster(path, file_bands, bands, nodata=nodata)
    if not chip.valid.any():
        raise DataError(path, "has no valid pixel (every pixel is nodata)")
    return chip


def write_like(source: str | Path, array: np.ndarray, out: str | Path, nodata: float | None = None) -> Path:
    """Write `array` (C, H, W) as a GeoTIFF on the grid of `source` (same CRS and transform),
    through a temporary file so a failed write leaves nothing behind."""
    out = Path(out)
    try:
        with rasterio.open(source) as src:
            crs, transform, size = src.crs, src.transform, (src.height, src.width)
    except RasterioError:
        crs, transform, size = None, None, array.shape[1:]
    if tuple(array.shape[1:]) != tuple(size):
        raise DataError(out, f"prediction is {array.shape[1]}x{array.shape[2]} but {source} is {size[0]}x{size[1]}")
    with atomic_output(out) as tmp, rasterio.open(
            tmp, "w", driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
            dtype=array.dtype.name, crs=crs, transform=transform, nodata=nodata, compress="deflate") as dst:
        dst.write(array)
    return out
