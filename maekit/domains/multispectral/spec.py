"""Band presets: names, raw-value scaling, default statistics, band groups and display bands.

Band names are data: configs name bands, and these presets only supply defaults. Default
statistics are rough values for the sensor; compute your own with `maekit stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BandPreset:
    """Defaults for one sensor.

    `scale` and `offset` map raw stored values to physical units (`raw * scale + offset`);
    `mean` and `std` are in those units.
    """

    name: str
    bands: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    rgb: tuple[str, str, str]
    dtype: str
    nodata: float | None = None
    description: str = ""
    extras: dict[str, object] = field(default_factory=dict)


def _repeat(value: float, n: int) -> tuple[float, ...]:
    return tuple(float(value) for _ in range(n))


NAIP = BandPreset(
    name="naip",
    bands=("R", "G", "B", "NIR"),
    groups=(("R", "G", "B"), ("NIR",)),
    mean=(0.45, 0.45, 0.42, 0.50),
    std=(0.20, 0.18, 0.16, 0.20),
    scale=_repeat(1 / 255, 4),
    offset=_repeat(0.0, 4),
    rgb=("R", "G", "B"),
    dtype="uint8",
    description="USDA NAIP aerial orthophotos: R, G, B, NIR, uint8, 0.6-1 m",
)

SENTINEL2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
SENTINEL2 = BandPreset(
    name="sentinel2",
    bands=SENTINEL2_BANDS,
    # SatMAE-style groups by resolution/wavelength; the 60 m atmospheric bands form their own
    groups=(("B02", "B03", "B04", "B08"), ("B05", "B06", "B07", "B8A"), ("B11", "B12"),
            ("B01", "B09", "B10")),
    mean=(0.14, 0.12, 0.11, 0.10, 0.12, 0.20, 0.24, 0.23, 0.26, 0.07, 0.01, 0.18, 0.11),
    std=(0.03, 0.04, 0.05, 0.07, 0.07, 0.09, 0.11, 0.11, 0.12, 0.04, 0.01, 0.10, 0.08),
    scale=_repeat(1e-4, 13),
    offset=_repeat(0.0, 13),
    rgb=("B04", "B03", "B02"),
    dtype="uint16",
    nodata=0,
    description="Sentinel-2 L1C top-of-atmosphere, 13 bands in ESA order, DN = reflectance x 10000",
)

# SatVision-TOA's 14 MODIS L1B bands: 6 reflective (as reflectance, x0.01 of percent TOA
# reflectance) then 8 emissive (brightness temperature, min-max scaled per band).
TOA_REFLECTIVE = ("b01", "b02", "b03", "b26", "b06", "b07")
TOA_EMISSIVE = ("b20", "b27", "b28", "b29", "b31", "b32", "b33", "b34")
_TOA_MIN_K = (223.0, 200.0, 200.0, 205.0, 190.0, 190.0, 200.0, 195.0)
_TOA_MAX_K = (330.0, 270.0, 280.0, 320.0, 325.0, 320.0, 290.0, 275.0)
TOA = BandPreset(
    name="toa",
    bands=TOA_REFLECTIVE + TOA_EMISSIVE,
    groups=(TOA_REFLECTIVE[:3], TOA_REFLECTIVE[3:], TOA_EMISSIVE[:4], TOA_EMISSIVE[4:]),
    mean=_repeat(0.3, 6) + _repeat(0.5, 8),
    std=_repeat(0.25, 6) + _repeat(0.25, 8),
    scale=_repeat(0.01, 6) + tuple(1.0 / (hi - lo) for lo, hi in zip(_TOA_MIN_K, _TOA_MAX_K)),
    offset=_repeat(0.0, 6) + tuple(-lo / (hi - lo) for lo, hi in zip(_TOA_MIN_K, _TOA_MAX_K)),
    rgb=("b01", "b03", "b02"),  # MODIS red, blue, green are bands 1, 3, 4; 4 is not in the set
    dtype="float32",
    description="MODIS L1B TOA as in SatVision-TOA: 14 bands, reflective as reflectance, "
    "emissive brightness temperatures min-max scaled",
)

RGB = BandPreset(
    name="rgb",
    bands=("R", "G", "B"),
    groups=(("R", "G", "B"),),
    # measured on EuroSAT RGB (2,000 chips); aerial photos are brighter: compute yours with `maekit stats`
    mean=(0.346, 0.382, 0.409),
    std=(0.204, 0.138, 0.117),
    scale=_repeat(1 / 255, 3),
    offset=_repeat(0.0, 3),
    rgb=("R", "G", "B"),
    dtype="uint8",
    description="8-bit RGB pictures (JPEG/PNG/GeoTIFF): EuroSAT RGB (Sentinel-2 B04, B03, B02 at 10 m), "
    "UC Merced, RESISC45, aerial photos",
    extras={"wavelength_nm": (665.0, 560.0, 490.0)},  # Sentinel-2 B04/B03/B02 centres; other sensors are close
)

PRESETS: dict[str, BandPreset] = {p.name: p for p in (NAIP, SENTINEL2, TOA, RGB)}


def get_preset(name: str) -> BandPreset:
    """The preset called `name`, or a clear error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown band preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def describe_presets() -> list[str]:
    """One line per band preset (for `maekit domains`)."""
    return [f"preset {p.name:10s} {len(p.bands):2d} bands {','.join(p.bands)}: {p.description}"
            for p in PRESETS.values()]
