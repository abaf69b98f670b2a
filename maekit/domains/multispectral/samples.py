"""Seeded generators of small sample datasets in the layouts the real readers expect.

Chips are georeferenced GeoTIFFs (or .npz for TOA). Classes differ only in spatial structure
(crop rows, orchard lattices, forest clumps, buildings and roads): every chip's per-band mean
and contrast are drawn from the same distribution whatever its class, so a model has to see
texture, which is what masked-image pretraining learns, to tell classes apart. Pretraining
on the unlabelled chips clearly lifts a linear probe over the randomly initialised encoder
(`make demo` measures it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from rasterio.transform import from_origin

from maekit.domains.multispectral.spec import NAIP, TOA
from maekit.domains.registry import Example, SampleOptions
from maekit.progress import progress

NAIP_CLASSES = ("cropland", "orchard", "forest", "urban")
TOA_CLASSES = ("cirrus", "broken_cumulus", "stratus", "cloud_streets")
_STRUCTURE_OF = {0: "stripes", 1: "lattice", 2: "clumps", 3: "blocks"}


def structure_field(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) float field with zero mean and unit variance, of one structure kind."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 9)
        phase = rng.uniform(0, 2 * np.pi)
        f = np.tanh(3 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase))
    elif kind == "lattice":
        angle, period = rng.uniform(0, np.pi / 2), rng.uniform(6, 10)
        u = x * np.cos(angle) + y * np.sin(angle) + rng.uniform(0, period)
        v = -x * np.sin(angle) + y * np.cos(angle) + rng.uniform(0, period)
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        f = np.exp(-(du**2 + dv**2) / (2 * (period / 5) ** 2))
    elif kind == "clumps":
        noise = rng.standard_normal((size, size))
        fy = np.fft.fftfreq(size)[:, None]
        fx = np.fft.fftfreq(size)[None, :]
        cutoff = rng.uniform(0.04, 0.08)
        f = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-(fx**2 + fy**2) / (2 * cutoff**2))))
    elif kind == "blocks":
        f = np.zeros((size, size))
        for _ in range(int(rng.integers(6, 14))):
            h, w = rng.integers(4, 12, size=2)
            top, left = rng.integers(0, size - 4, size=2)
            f[top:top + h, left:left + w] = rng.uniform(0.6, 1.0)
        for _ in range(int(rng.integers(1, 3))):
            if rng.random() < 0.5:
                r = int(rng.integers(0, size - 2))
                f[r:r + 2, :] = -0.5
            else:
                c = int(rng.integers(0, size - 2))
                f[:, c:c + 2] = -0.5
    else:
        raise ValueError(f"unknown structure {kind!r}")
    f = f - f.mean()
    return f / (f.std() + 1e-9)


def _nodata_wedge(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) bool, True inside a corner triangle (the collar of a scene edge)."""
    y, x = np.mgrid[0:size, 0:size]
    corner = int(rng.integers(0, 4))
    xx = x if corner in (0, 2) else size - 1 - x
    yy = y if corner in (0, 1) else size - 1 - y
    return xx + yy < rng.uniform(0.2, 0.45) * size


def _write_tif(path: Path, data: np.ndarray, transform: rasterio.Affine, crs: str, nodata: float | None,
               band_names: tuple[str, ...] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                   dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if band_names:
            dst.descriptions = band_names


def naip_like_chip(label: int, size: int, rng: np.random.Generator, nodata_wedge: bool) -> np.ndarray:
    """(4, size, size) uint8 R, G, B, NIR chip of class `label`; 0 is nodata."""
    field = structure_field(_STRUCTURE_OF[label], size, rng)
    base = rng.uniform(70, 170, size=4)
    amplitude = rng.uniform(14, 34, size=4)
    noise = rng.normal(0, 6, size=(4, size, size))
    chip = base[:, None, None] + amplitude[:, None, None] * field[None] + noise
    chip = np.clip(np.round(chip), 1, 255).astype(np.uint8)
    if nodata_wedge:
        chip[:, _nodata_wedge(size, rng)] = 0
    return chip


def toa_like_chip(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(14, size, size) float32 MODIS-TOA-like chip: reflectance in percent, then kelvin."""
    field = structure_field(_STRUCTURE_OF[label], size, rng)
    cloud = 1 / (1 + np.exp(-1.5 * field))  # 0..1 cloudiness
    reflective = rng.uniform(5, 15, size=6)[:, None, None] + rng.uniform(30, 60, size=6)[:, None, None] * cloud
    emissive = rng.uniform(270, 300, size=8)[:, None, None] - rng.uniform(25, 55, size=8)[:, None, None] * cloud
    chip = np.concatenate([reflective, emissive]) + rng.normal(0, 0.5, size=(14, size, size))
    return chip.astype(np.float32)


def make_picture_dataset(root: str | Path, per_class: int = 8, size: int | tuple[int, ...] = 32,
                         formats: tuple[str, ...] = ("jpg", "png"), grey: bool = False, seed: int = 0) -> Path:
    """Write 8-bit RGB (or grey) picture chips as EuroSAT RGB, UC Merced and RESISC45 distribute
    them: `root/<Class>/<Class>_<n>.<ext>` with no split folders, the extensions taking turns
    over `formats`. `size` may list several sizes, also taken in turn. Returns `root`."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    sizes = (size,) if isinstance(size, int) else tuple(size)
    counter = 0
    for label, name in enumerate(NAIP_CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            side = sizes[counter % len(sizes)]
            rgb = naip_like_chip(label, side, rng, nodata_wedge=False)[:3].clip(1, 255)
            pixels = rgb.mean(0).astype(np.uint8) if grey else np.moveaxis(rgb, 0, -1).astype(np.uint8)
            ext = formats[counter % len(formats)]
            Image.fromarray(pixels).save(folder / f"{name}_{n}.{ext}", quality=95)
            counter += 1
    return root


def make_chip_dataset(
    root: str | Path,
    preset: Literal["naip", "toa"] = "naip",
    task: Literal["classification", "segmentation"] = "classification",
    per_class: int = 64,
    val_per_class: int = 16,
    size: int = 64,
    nodata_fraction: float = 0.1,
    file_format: Literal["tif", "npz"] = "tif",
    seed: int = 0,
) -> Path:
    """Write a small labelled dataset: `root/{train,val}/<class>/*.tif` (classification) or
    `root/{train,val}/{images,masks}/*.tif` (segmentation, regions of several classes).

    Returns `root`. Chips are UTM-georeferenced on a 1 m (NAIP) or 1 km (TOA) grid.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = NAIP_CLASSES if preset == "naip" else TOA_CLASSES
    spec = NAIP if preset == "naip" else TOA
    pixel = 1.0 if preset == "naip" else 1000.0
    crs = "EPSG:26914" if preset == "naip" else "EPSG:32614"
    counter = 0

    def chip_of(label: int) -> np.ndarray:
        if preset == "naip":
            return naip_like_chip(label, size, rng, rng.random() < nodata_fraction)
        return toa_like_chip(label, size, rng)

    def write(path: Path, data: np.ndarray) -> None:
        nonlocal counter
        transform = from_origin(500000 + counter * size * pixel, 4200000, pixel, pixel)
        counter += 1
        if file_format == "npz":
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path.with_suffix(".npz"), image=data)
        else:
            _write_tif(path, data, transform, crs, 0 if preset == "naip" else None, spec.bands)

    for split, count in (("train", per_class), ("val", val_per_class)):
        for i in progress(range(count * len(classes)), desc=f"{split} chips", unit="chip"):
            if task == "classification":
                label = i % len(classes)
                write(root / split / classes[label] / f"chip_{i:05d}.tif", chip_of(label))
                continue
            # segmentation: a Voronoi partition of the chip into regions of different classes
            centres = rng.uniform(0, size, size=(int(rng.integers(2, 5)), 2))
            region_class = rng.integers(0, len(classes), size=len(centres))
            y, x = np.mgrid[0:size, 0:size]
            nearest = ((y[..., None] - centres[:, 0]) ** 2 + (x[..., None] - centres[:, 1]) ** 2).argmin(-1)
            mask = region_class[nearest].astype(np.uint8)
            layers = np.stack([chip_of(c) for c in range(len(classes))])
            image = np.take_along_axis(layers, mask[None, None].astype(np.int64), 0)[0]
            if preset == "naip":
                mask[(image == 0).all(0)] = 255  # ignore index under nodata
            stem = f"chip_{i:05d}"
            write(root / split / "images" / f"{stem}.tif", image)
            transform = from_origin(500000 + (counter - 1) * size * pixel, 4200000, pixel, pixel)
            _write_tif(root / split / "masks" / f"{stem}.tif", mask[None], transform, crs, None)
    return root


def make_large_raster(path: str | Path, size: int = 8192, seed: int = 0, tile: int = 512,
                      compress: str = "deflate") -> Path:
    """Write a large tiled, compressed 4-band uint8 NAIP-like GeoTIFF (for benchmarks)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", height=size, width=size, count=4, dtype="uint8", crs="EPSG:26914",
                   transform=from_origin(500000, 4200000, 1.0, 1.0), nodata=0, tiled=True,
                   blockxsize=tile, blockysize=tile, compress=compress)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = NAIP.bands
        for row in progress(range(0, size, tile), desc="raster rows", unit="row"):
            for col in range(0, size, tile):
                label = int(rng.integers(0, len(NAIP_CLASSES)))
                chip = naip_like_chip(label, tile, rng, False)
                dst.write(chip, window=rasterio.windows.Window(col, row, tile, tile))
    return path


def sample_data(out: Path, preset: str, options: SampleOptions) -> Path:
    """`maekit sample-data --preset naip|toa`: labelled chips (64 per class, 64x64 by default)."""
    return make_chip_dataset(out, preset, options.task, 64 if options.per_class is None else options.per_class,
                             options.val_per_class, 64 if options.size is None else options.size,
                             file_format=options.file_format, seed=options.seed)  # type: ignore[arg-type]


def example(root: Path) -> Example:
    """Conformance example: 16x16 NAIP chips, 8-pixel patches."""
    from maekit.domains.multispectral.adapter import MultispectralAdapter
    from maekit.domains.multispectral.datamodule import ChipDataModule

    data = make_chip_dataset(root, "naip", "classification", per_class=2, val_per_class=1, size=16, seed=0)
    return Example(MultispectralAdapter(preset="naip", patch_size=8),
                   ChipDataModule(str(data), preset="naip", task="classification", batch_size=2, crop_size=16),
                   native=lambda adapter, batch: adapter.prepare(batch))
