"""Sensors as data: each band's central wavelength and bandwidth, and the ground sample distance.

A sensor is either a band preset (`naip`, `sentinel2`, `landsat8`, ... see `sensor_names()`) or a
YAML file, so a new sensor needs no code:

    name: my_drone
    gsd_m: 0.05
    bands:
      - {name: blue, wavelength_nm: 475, bandwidth_nm: 32}
      - {name: green, wavelength_nm: 560, bandwidth_nm: 27}
      - {name: red, wavelength_nm: 668, bandwidth_nm: 14}
      - {name: nir, wavelength_nm: 842, bandwidth_nm: 57}
    # optional, one value per band, in physical units (raw * scale + offset):
    mean: [0.05, 0.07, 0.06, 0.30]
    std: [0.03, 0.03, 0.04, 0.10]
    scale: [1.0e-4, 1.0e-4, 1.0e-4, 1.0e-4]
    offset: [0, 0, 0, 0]

Every problem in such a file (a band without a wavelength, a zero or negative value, a repeated
band name, statistics of the wrong length) is one `DataError` naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maekit.domains.multispectral.spec import ALIASES, PRESETS, BandPreset, get_preset
from maekit.errors import ConfigError, DataError

__all__ = ["BandSpec", "SensorSpec", "load_sensor", "sensor_from_preset", "sensor_names"]


@dataclass(frozen=True)
class BandSpec:
    """One band: its name, central wavelength and full bandwidth of its spectral response (nm)."""

    name: str
    wavelength_nm: float
    bandwidth_nm: float


@dataclass(frozen=True)
class SensorSpec:
    """A sensor: its bands, ground sample distance (m) and optional per-band raw scaling/statistics.

    `scale`/`offset` map raw values to physical units (`raw * scale + offset`); `mean`/`std` are
    in those units. Each is None or one value per band.
    """

    name: str
    bands: tuple[BandSpec, ...]
    gsd_m: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise ConfigError(f"sensor {self.name!r}: {problem}")

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    @property
    def wavelengths(self) -> list[float]:
        return [b.wavelength_nm for b in self.bands]

    @property
    def bandwidths(self) -> list[float]:
        return [b.bandwidth_nm for b in self.bands]

    def band(self, name: str) -> BandSpec:
        """The band called `name`, or an error naming it and the sensor's bands."""
        for b in self.bands:
            if b.name == name:
                return b
        raise ConfigError(f"band {name!r} has no known wavelength: sensor {self.name!r} has bands "
                          f"{self.band_names}; give `wavelengths` (nm) instead of band names")

    def select(self, names: Sequence[str]) -> list[BandSpec]:
        """The bands called `names`, in that order."""
        return [self.band(n) for n in names]


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _problem(sensor: SensorSpec) -> str | None:
    """What is wrong with `sensor`, or None."""
    if not sensor.bands:
        return "has no bands"
    names = [b.name for b in sensor.bands]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return f"band names repeat: {repeated}"
    for b in sensor.bands:
        if not isinstance(b.name, str) or not b.name:
            return f"a band has no name ({b})"
        for what in ("wavelength_nm", "bandwidth_nm"):
            if not _positive(getattr(b, what)):
                return f"band {b.name!r} has {what} {getattr(b, what)!r}; it must be a positive number of nm"
    if sensor.gsd_m is not None and not _positive(sensor.gsd_m):
        return f"gsd_m is {sensor.gsd_m!r}; it must be a positive number of metres"
    for what in ("mean", "std", "scale", "offset"):
        values = getattr(sensor, what)
        if values is None:
            continue
        if len(values) != len(names):
            return f"{what} has {len(values)} values but there are {len(names)} bands {names}"
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return f"{what} must be finite numbers, got {list(values)}"
    if sensor.std is not None and not all(v > 0 for v in sensor.std):
        return f"std must be positive for every band, got {list(sensor.std)}"
    return None


def sensor_from_preset(preset: BandPreset | str) -> SensorSpec:
    """The `SensorSpec` of a band preset (object or name)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if len(p.wavelength_nm) != len(p.bands) or len(p.bandwidth_nm) != len(p.bands):
        raise ConfigError(f"band preset {p.name!r} does not give a wavelength and bandwidth for each of its bands")
    return SensorSpec(
        name=p.name,
        bands=tuple(BandSpec(n, float(w), float(bw)) for n, w, bw in zip(p.bands, p.wavelength_nm, p.bandwidth_nm)),
        gsd_m=p.gsd_m, mean=tuple(p.mean), std=tuple(p.std), scale=tuple(p.scale), offset=tuple(p.offset),
    )


def sensor_names() -> list[str]:
    """Names `load_sensor` knows without a file (the band presets and their aliases)."""
    return sorted([*PRESETS, *ALIASES])


def _numbers(path: Path, data: Mapping[str, Any], key: str) -> tuple[float, ...] | None:
    values = data.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in values):
        raise DataError(path, f"`{key}` must be a list of numbers, one per band, got {values!r}")
    return tuple(float(v) for v in values)


def sensor_from_dict(data: Any, path: str | Path = "<sensor>") -> SensorSpec:
    """A `SensorSpec` from the parsed YAML mapping `data`; errors name `path`."""
    path = Path(path)
    if not isinstance(data, Mapping):
        raise DataError(path, f"a sensor file is a mapping with `name`, `gsd_m` and `bands`, got {type(data).__name__}")
    unknown = sorted(set(data) - {"name", "gsd_m", "bands", "mean", "std", "scale", "offset", "description"})
    if unknown:
        raise DataError(path, f"unknown keys {unknown}; a sensor has name, gsd_m, bands, mean, std, scale, offset")
    bands = data.get("bands")
    if not isinstance(bands, list) or not bands:
        raise DataError(path, "`bands` must be a non-empty list of {name, wavelength_nm, bandwidth_nm}")
    specs = []
    for i, b in enumerate(bands):
        if not isinstance(b, Mapping) or "name" not in b:
            raise DataError(path, f"band {i} must be a mapping with `name`, `wavelength_nm`, `bandwidth_nm`, got {b!r}")
        name = str(b["name"])
        extra = sorted(set(b) - {"name", "wavelength_nm", "bandwidth_nm"})
        if extra:
            raise DataError(path, f"band {name!r} has unknown keys {extra}; a band has name, wavelength_nm, "
                            "bandwidth_nm")
        for what in ("wavelength_nm", "bandwidth_nm"):
            if what not in b or b[what] is None:
                raise DataError(path, f"band {name!r} has no `{what}`: every band needs its central wavelength and "
                                "bandwidth in nm")
            if not _positive(b[what]):
                raise DataError(path, f"band {name!r} has {what} {b[what]!r}; it must be a positive number of nm")
        specs.append(BandSpec(name, float(b["wavelength_nm"]), float(b["bandwidth_nm"])))
    gsd = data.get("gsd_m")
    if gsd is not None and not _positive(gsd):
        raise DataError(path, f"gsd_m is {gsd!r}; it must be a positive number of metres")
    name = data.get("name") or path.stem
    try:
        return SensorSpec(name=str(name), bands=tuple(specs), gsd_m=None if gsd is None else float(gsd),
                          mean=_numbers(path, data, "mean"), std=_numbers(path, data, "std"),
                          scale=_numbers(path, data, "scale"), offset=_numbers(path, data, "offset"))
    except ConfigError as err:
        raise DataError(path, str(err)) from None


def load_sensor(name_or_yaml: str | Path | SensorSpec) -> SensorSpec:
    """A sensor by preset name (`sensor_names()`) or from a YAML file (see the module docstring)."""
    if isinstance(name_or_yaml, SensorSpec):
        return name_or_yaml
    text = str(name_or_yaml)
    if not text.endswith((".yaml", ".yml")) and not Path(text).is_file():
        if text in PRESETS or text in ALIASES:
            return sensor_from_preset(text)
        raise ConfigError(f"unknown sensor {text!r}: give a YAML file or one of {', '.join(sensor_names())}")
    path = Path(text)
    if not path.is_file():
        raise DataError(path, "no such sensor file")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(path, f"not valid YAML: {err}") from None
    return sensor_from_dict(data, path)
