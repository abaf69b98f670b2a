"""Seeded synthetic scenes seen by several sensors: each band simulated at its own wavelength.

A scene is a fine grid of material abundances (green vegetation, forest canopy, bare soil, water,
concrete) arranged by class-specific spatial structure (crop rows, orchard lattices, forest
clumps, building blocks; the structures of `samples.structure_field`). Each material has a
smooth reflectance spectrum over 400-2500 nm (a vegetation red edge and green peak, leaf-water
absorption near 1450/1940 nm, a soil slope, dark water, flat concrete) and a surface temperature.
A sensor sees the scene as:

- per band, the material spectra weighted by the band's spectral response (a Gaussian with the
  band's centre and full width at half maximum = its bandwidth), times an atmospheric
  transmission with water-vapour (940 nm) and cirrus (1375 nm) absorption; bands beyond 3 um
  carry brightness temperature (K) instead of reflectance;
- at its ground sample distance by area-averaging the abundances (block means);
- with sensor noise, stored in the sensor's raw units (`(value - offset) / scale`, rounded and
  clipped to the preset's dtype; raw 0 is avoided where 0 is nodata).

GSD ratios are compressed so tiny chips stay informative: sensors under 5 m see the scene at
full resolution, under 20 m at 1/2, coarser at 1/4 (a 64-pixel scene: NAIP 64, Sentinel-2 32,
Landsat 16 pixels); the files' geotransforms carry each sensor's own `gsd_m`.

Classes are partly spectral (each class prefers a material pair, with probability 0.6) and
partly spatial (the structure), so a model needs both. Layout, the same scene ids in every
sensor: `root/<sensor>/{train,val}/<class>/scene_<n>.tif`; a sensor given as YAML (a file or
its mapping, as the held-out `DOVE8`) is written to `root/<sensor>/sensor.yaml`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rasterio.transform import from_origin

from maekit.domains.multispectral.samples import NAIP_CLASSES, _STRUCTURE_OF, _write_tif, structure_field
from maekit.domains.multispectral.sensors import SensorSpec, load_sensor, sensor_from_dict
from maekit.domains.multispectral.spec import PRESETS
from maekit.domains.registry import SampleOptions
from maekit.errors import ConfigError
from maekit.progress import progress

MATERIALS = ("vegetation", "forest", "soil", "water", "concrete")
#: surface temperature (K) of each material, in `MATERIALS` order
TEMPERATURE_K = np.array([296.0, 293.0, 306.0, 290.0, 312.0])
#: the material pair each class prefers (foreground where its structure is high, background)
CLASS_MATERIALS = {"cropland": ("vegetation", "soil"), "orchard": ("forest", "soil"),
                   "forest": ("forest", "vegetation"), "urban": ("concrete", "soil")}
#: the default pretraining sensors
PRETRAIN_SENSORS = ("naip", "sentinel2", "landsat8")
#: the sensor held out of pretraining: an 8-band PlanetScope-SuperDove-like sensor at 3 m (centres and
#: widths rounded from Planet's published band passes), written as `<root>/dove8/sensor.yaml` (no
#: statistics: `MultiSensorDataModule` computes them with `stats: compute`)
DOVE8: dict[str, Any] = {"name": "dove8", "gsd_m": 3.0, "bands": [
    {"name": n, "wavelength_nm": w, "bandwidth_nm": bw} for n, w, bw in (
        ("coastal_blue", 443, 20), ("blue", 490, 50), ("green_i", 531, 36), ("green", 565, 36), ("yellow", 610, 20),
        ("red", 665, 31), ("red_edge", 705, 15), ("nir", 865, 40))]}
THERMAL_NM = 3000.0


def _gauss(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - centre) / width) ** 2)


def material_reflectance(wavelength_nm: np.ndarray) -> np.ndarray:
    """(len(MATERIALS), *wavelength.shape) surface reflectance (0..1) of each material at `wavelength_nm`."""
    x = np.asarray(wavelength_nm, dtype=np.float64)
    leaf_water = 1 - 0.15 * _gauss(x, 970, 30) - 0.25 * _gauss(x, 1200, 40) - 0.6 * _gauss(x, 1450, 60) \
        - 0.8 * _gauss(x, 1940, 70)
    swir_fall = np.where(x > 1100, np.exp(-(x - 1100) / 1400), 1.0)
    vegetation = (0.035 + 0.07 * _gauss(x, 555, 40) + 0.45 / (1 + np.exp(-(x - 715) / 11)) * swir_fall) * leaf_water
    forest = (0.025 + 0.04 * _gauss(x, 555, 40) + 0.30 / (1 + np.exp(-(x - 720) / 12)) * swir_fall) * leaf_water
    soil = (0.07 + 0.26 * (1 - np.exp(-(x - 400) / 700))) * (1 - 0.2 * _gauss(x, 1450, 60) - 0.25 * _gauss(x, 1940, 70)
                                                             - 0.1 * _gauss(x, 2200, 40))
    water = 0.02 + 0.05 * _gauss(x, 480, 90) - 0.015 / (1 + np.exp(-(x - 700) / 30))
    concrete = (0.20 + 0.06 * (x - 400) / 2100) * (1 - 0.08 * _gauss(x, 1450, 60) - 0.1 * _gauss(x, 1940, 70))
    return np.clip(np.stack([vegetation, forest, soil, water, concrete]), 0.001, 1.0)


def atmosphere(wavelength_nm: np.ndarray) -> np.ndarray:
    """Two-way transmission: water vapour near 940 nm and the 1375 nm cirrus band are dark."""
    x = np.asarray(wavelength_nm, dtype=np.float64)
    return 1 - 0.55 * _gauss(x, 940, 25) - 0.97 * _gauss(x, 1375, 40) - 0.9 * _gauss(x, 1880, 60)


def band_reflectance(sensor: SensorSpec, samples: int = 41) -> np.ndarray:
    """(C, len(MATERIALS)) each material as each reflective band sees it (Gaussian response,
    FWHM = bandwidth, times the atmosphere); thermal bands (beyond 3 um) get NaN rows."""
    rows = []
    for band in sensor.bands:
        if band.wavelength_nm >= THERMAL_NM:
            rows.append(np.full(len(MATERIALS), np.nan))
            continue
        sigma = band.bandwidth_nm / 2.3548
        x = np.linspace(band.wavelength_nm - 2.5 * sigma, band.wavelength_nm + 2.5 * sigma, samples)
        w = _gauss(x, band.wavelength_nm, sigma)
        seen = material_reflectance(x) * atmosphere(x)
        rows.append((seen * w).sum(-1) / w.sum())
    return np.stack(rows)


def gsd_factor(sensor: SensorSpec) -> int:
    """The compressed resampling factor of a sensor (see the module doc)."""
    gsd = sensor.gsd_m if sensor.gsd_m is not None else 1.0
    return 1 if gsd < 5 else 2 if gsd < 20 else 4


def scene_abundances(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(len(MATERIALS), size, size) abundances (summing to 1) of one scene of class `label`."""
    name = NAIP_CLASSES[label]
    if rng.random() < 0.6:
        fore, back = CLASS_MATERIALS[name]
    else:  # a pair any class may show
        fore, back = rng.choice(MATERIALS, size=2, replace=False)
    field = structure_field(_STRUCTURE_OF[label], size, rng)
    a = 1 / (1 + np.exp(-2.5 * field))
    out = np.zeros((len(MATERIALS), size, size))
    out[MATERIALS.index(fore)] += a
    out[MATERIALS.index(back)] += 1 - a
    if rng.random() < 0.3:  # a pond or a puddle
        y, x = np.mgrid[0:size, 0:size]
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size / 10, size / 5)]
        pond = ((y - cy) ** 2 + (x - cx) ** 2 < r**2).astype(float)
        out *= 1 - pond
        out[MATERIALS.index("water")] += pond
    return out


def _block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    c, h, w = array.shape
    return array.reshape(c, h // factor, factor, w // factor, factor).mean((2, 4))


def sensor_dtype(sensor: SensorSpec) -> str:
    """The stored dtype: the preset's for a preset sensor, float32 for a YAML sensor."""
    preset = PRESETS.get(sensor.name)
    return preset.dtype if preset is not None else "float32"


def render(abundances: np.ndarray, sensor: SensorSpec, rng: np.random.Generator, noise: float = 0.004,
           brightness: np.ndarray | None = None, response: np.ndarray | None = None) -> np.ndarray:
    """(C, h, w) raw values of a scene seen by `sensor` (see the module doc).

    `brightness` (len(MATERIALS),) scales each material's reflectance for this scene (illumination,
    moisture); thermal bands get 0.3 K noise per unit of `noise / 0.004`. `response` is
    `band_reflectance(sensor)` when already computed."""
    factor = gsd_factor(sensor)
    if abundances.shape[1] % factor:
        raise ConfigError(f"scene size {abundances.shape[1]} is not a multiple of {sensor.name}'s factor {factor}")
    seen = _block_mean(abundances, factor)
    response = band_reflectance(sensor) if response is None else response
    if brightness is not None:
        response = response * brightness[None, :]
    thermal = np.isnan(response[:, 0])
    values = np.einsum("cm,mhw->chw", np.nan_to_num(response), seen)
    values[thermal] = np.einsum("m,mhw->hw", TEMPERATURE_K, seen)[None]
    scale_noise = np.where(thermal, 0.3 * noise / 0.004, noise)[:, None, None]
    values = values + rng.normal(size=values.shape) * scale_noise
    scale = np.asarray(sensor.scale if sensor.scale is not None else [1.0] * len(sensor.bands))[:, None, None]
    offset = np.asarray(sensor.offset if sensor.offset is not None else [0.0] * len(sensor.bands))[:, None, None]
    raw = (values - offset) / scale
    dtype = np.dtype(sensor_dtype(sensor))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        raw = np.clip(np.round(raw), max(info.min, 1), info.max)  # raw 0 is nodata in the presets
    return raw.astype(dtype)


def make_multisensor_dataset(root: str | Path,
                             sensors: Sequence[str | Path | Mapping[str, Any]] = (*PRETRAIN_SENSORS, DOVE8),
                             per_class: int = 32, val_per_class: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Write the same labelled scenes as each sensor sees them (layout in the module doc).

    Args:
        root: output folder.
        sensors: preset names, sensor YAML files or sensor mappings (as a YAML file holds them);
            default NAIP, Sentinel-2 L1C, Landsat 8 and the 8-band `DOVE8`, which the notebook
            and the evidence script hold out of pretraining. A YAML or mapping sensor is written
            to `<root>/<name>/sensor.yaml`.
        per_class, val_per_class: scenes per class in `train` and `val`.
        size: scene edge in pixels at the finest sensor (a multiple of 4).
        seed: everything random.

    Returns `root`.
    """
    root = Path(root)
    if size % 4:
        raise ConfigError(f"size must be a multiple of 4 (the coarsest sensor sees 1/4), got {size}")
    specs = [sensor_from_dict(s) if isinstance(s, Mapping) else load_sensor(s) for s in sensors]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sensors repeat: {names}")
    responses = [band_reflectance(s) for s in specs]
    rng = np.random.default_rng(seed)
    n = 0
    for split, count in (("train", per_class), ("val", val_per_class)):
        for i in progress(range(count * len(NAIP_CLASSES)), desc=f"{split} scenes", unit="scene"):
            label = i % len(NAIP_CLASSES)
            abundances = scene_abundances(label, size, rng)
            brightness = rng.uniform(0.8, 1.2, size=len(MATERIALS))
            for spec, response in zip(specs, responses):
                raw = render(abundances, spec, rng, brightness=brightness, response=response)
                gsd = spec.gsd_m if spec.gsd_m is not None else 1.0
                transform = from_origin(500000 + n * size * gsd, 4200000, gsd, gsd)
                preset = PRESETS.get(spec.name)
                _write_tif(root / spec.name / split / NAIP_CLASSES[label] / f"scene_{n:05d}.tif", raw, transform,
                           "EPSG:32614", preset.nodata if preset is not None else None, tuple(spec.band_names))
            n += 1
    for source, spec in zip(sensors, specs):
        if isinstance(source, Mapping):
            (root / spec.name / "sensor.yaml").write_text(yaml.safe_dump(dict(source), sort_keys=False))
        elif str(source).endswith((".yaml", ".yml")):
            shutil.copyfile(source, root / spec.name / "sensor.yaml")
    return root


def sample_data(out: Path, preset: str, options: SampleOptions) -> Path:
    """`maekit sample-data --preset multisensor`: the same scenes as NAIP, Sentinel-2, Landsat 8 and
    an 8-band YAML sensor (`dove8/sensor.yaml`) see them (32 per class, 64 pixels at the finest by default)."""
    if options.task != "classification" or options.file_format != "tif":
        raise ConfigError("the multisensor sample data is classification chips as GeoTIFF only")
    return make_multisensor_dataset(out, per_class=32 if options.per_class is None else options.per_class,
                                    val_per_class=options.val_per_class,
                                    size=64 if options.size is None else options.size, seed=options.seed)
