"""Band presets: names, raw-value scaling, default statistics, band groups, display bands, and
each band's central wavelength and bandwidth with the sensor's ground sample distance.

Band names are data: configs name bands, and these presets only supply defaults. Default
statistics are rough values for the sensor; compute your own with `maekit stats`. Wavelengths
and bandwidths (nm) are the centre and full width of each band's published spectral response
(the sources are named next to each table); a new sensor is described in YAML without code
(`maekit.domains.multispectral.sensors.load_sensor`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: the preset names a config may give (`PRESETS` and `ALIASES`)
PresetName = Literal["naip", "sentinel2", "sentinel2_l1c", "sentinel2_l2a", "eurosat", "landsat8", "landsat9", "toa",
                     "modis_toa", "hls", "rgb"]


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
    #: central wavelength of each band (nm), in `bands` order
    wavelength_nm: tuple[float, ...] = ()
    #: full width of each band's spectral response (nm), in `bands` order
    bandwidth_nm: tuple[float, ...] = ()
    #: ground sample distance of the delivered pixels (m)
    gsd_m: float | None = None


def _repeat(value: float, n: int) -> tuple[float, ...]:
    return tuple(float(value) for _ in range(n))


def _from_ranges(*ranges: tuple[float, float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(centres, widths) in nm of bands given as published (lower, upper) edges in nm."""
    return tuple((lo + hi) / 2 for lo, hi in ranges), tuple(hi - lo for lo, hi in ranges)


# Leica ADS100 (the camera flying most NAIP since 2014) nominal filter edges, nm: R, G, B, NIR
_NAIP_CENTRE, _NAIP_WIDTH = _from_ranges((619, 651), (525, 585), (435, 495), (808, 882))


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
    wavelength_nm=_NAIP_CENTRE,
    bandwidth_nm=_NAIP_WIDTH,
    gsd_m=0.6,
)

# ESA Sentinel-2 MSI spectral response (S2A central wavelength and bandwidth, nm; S2B/S2C differ
# by a few nm), Sentinel-2 User Handbook / S2-SRF_COPE-GSEG-EOPG-TN-15-0007
_S2_CENTRE = (442.7, 492.4, 559.8, 664.6, 704.1, 740.5, 782.8, 832.8, 864.7, 945.1, 1373.5, 1613.7, 2202.4)
_S2_WIDTH = (21.0, 66.0, 36.0, 31.0, 15.0, 15.0, 20.0, 106.0, 21.0, 20.0, 31.0, 91.0, 175.0)
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
    wavelength_nm=_S2_CENTRE,
    bandwidth_nm=_S2_WIDTH,
    gsd_m=10.0,
)

_L2A = [i for i, b in enumerate(SENTINEL2_BANDS) if b != "B10"]  # no cirrus band at the surface
SENTINEL2_L2A = BandPreset(
    name="sentinel2_l2a",
    bands=tuple(SENTINEL2_BANDS[i] for i in _L2A),
    groups=(("B02", "B03", "B04", "B08"), ("B05", "B06", "B07", "B8A"), ("B11", "B12"), ("B01", "B09")),
    mean=(0.12, 0.11, 0.10, 0.10, 0.13, 0.22, 0.26, 0.26, 0.28, 0.29, 0.21, 0.14),
    std=(0.05, 0.05, 0.05, 0.07, 0.07, 0.09, 0.11, 0.11, 0.12, 0.11, 0.11, 0.09),
    scale=_repeat(1e-4, 12),
    # processing baseline 04.00 (from 2022-01-25) adds BOA_ADD_OFFSET = -1000 to the DN; set
    # `offset: 0` for older products
    offset=_repeat(-0.1, 12),
    rgb=("B04", "B03", "B02"),
    dtype="uint16",
    nodata=0,
    description="Sentinel-2 L2A surface reflectance, 12 bands (no B10), DN = reflectance x 10000 + 1000",
    wavelength_nm=tuple(_S2_CENTRE[i] for i in _L2A),
    bandwidth_nm=tuple(_S2_WIDTH[i] for i in _L2A),
    gsd_m=10.0,
)

# EuroSAT MS: the 13 L1C bands resampled to 10 m, as its GeoTIFFs store them
EUROSAT = BandPreset(
    name="eurosat",
    bands=SENTINEL2_BANDS,
    groups=SENTINEL2.groups,
    mean=SENTINEL2.mean,
    std=SENTINEL2.std,
    scale=SENTINEL2.scale,
    offset=SENTINEL2.offset,
    rgb=("B04", "B03", "B02"),
    dtype="uint16",
    description="EuroSAT MS: Sentinel-2 L1C, 13 bands resampled to 10 m, 64 x 64 chips",
    wavelength_nm=_S2_CENTRE,
    bandwidth_nm=_S2_WIDTH,
    gsd_m=10.0,
)

# USGS Landsat 8-9 OLI/OLI-2 + TIRS/TIRS-2 band designations (edges, nm). Collection 2 Level-2:
# surface reflectance SR_B1..SR_B7 = DN x 2.75e-5 - 0.2, surface temperature ST_B10 (K) =
# DN x 0.00341802 + 149.0; the panchromatic B8, cirrus B9 and B11 are Level-1 only.
LANDSAT_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B10")
_LANDSAT_CENTRE, _LANDSAT_WIDTH = _from_ranges((430, 450), (450, 510), (530, 590), (640, 670), (850, 880),
                                               (1570, 1650), (2110, 2290), (10600, 11190))


def _landsat(name: str, satellite: str) -> BandPreset:
    return BandPreset(
        name=name,
        bands=LANDSAT_BANDS,
        groups=(("B2", "B3", "B4", "B5"), ("B6", "B7"), ("B1",), ("B10",)),
        mean=(0.08, 0.09, 0.11, 0.12, 0.25, 0.22, 0.16, 295.0),
        std=(0.06, 0.06, 0.07, 0.09, 0.10, 0.10, 0.09, 15.0),
        scale=_repeat(2.75e-5, 7) + (0.00341802,),
        offset=_repeat(-0.2, 7) + (149.0,),
        rgb=("B4", "B3", "B2"),
        dtype="uint16",
        nodata=0,
        description=f"{satellite} Collection 2 Level-2: 7 OLI surface reflectance bands and TIRS B10 surface "
        "temperature (K), 30 m",
        wavelength_nm=_LANDSAT_CENTRE,
        bandwidth_nm=_LANDSAT_WIDTH,
        gsd_m=30.0,
    )


LANDSAT8 = _landsat("landsat8", "Landsat 8 OLI/TIRS")
LANDSAT9 = _landsat("landsat9", "Landsat 9 OLI-2/TIRS-2")

# NASA HLS v2 (L30/S30 harmonised to the OLI band passes): the six bands Prithvi is trained on,
# named as terratorch/Prithvi name them. Statistics: rough HLS land values.
HLS = BandPreset(
    name="hls",
    bands=("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"),
    groups=(("BLUE", "GREEN", "RED", "NIR_NARROW"), ("SWIR_1", "SWIR_2")),
    mean=(0.08, 0.10, 0.12, 0.25, 0.22, 0.16),
    std=(0.06, 0.06, 0.07, 0.09, 0.10, 0.09),
    scale=_repeat(1e-4, 6),
    offset=_repeat(0.0, 6),
    rgb=("RED", "GREEN", "BLUE"),
    dtype="int16",
    nodata=-9999,
    description="NASA Harmonized Landsat Sentinel-2 (HLS L30/S30), the 6 Prithvi bands, reflectance x 10000, 30 m",
    wavelength_nm=_LANDSAT_CENTRE[1:7],
    bandwidth_nm=_LANDSAT_WIDTH[1:7],
    gsd_m=30.0,
)

# SatVision-TOA's 14 MODIS L1B bands: 6 reflective (as reflectance, x0.01 of percent TOA
# reflectance) then 8 emissive (brightness temperature, min-max scaled per band).
TOA_REFLECTIVE = ("b01", "b02", "b03", "b26", "b06", "b07")
TOA_EMISSIVE = ("b20", "b27", "b28", "b29", "b31", "b32", "b33", "b34")
_TOA_MIN_K = (223.0, 200.0, 200.0, 205.0, 190.0, 190.0, 200.0, 195.0)
_TOA_MAX_K = (330.0, 270.0, 280.0, 320.0, 325.0, 320.0, 290.0, 275.0)
# NASA MODIS band table (edges, nm) for bands 1, 2, 3, 26, 6, 7 and 20, 27, 28, 29, 31, 32, 33, 34
_TOA_CENTRE, _TOA_WIDTH = _from_ranges(
    (620, 670), (841, 876), (459, 479), (1360, 1390), (1628, 1652), (2105, 2155),
    (3660, 3840), (6535, 6895), (7175, 7475), (8400, 8700), (10780, 11280), (11770, 12270), (13185, 13485),
    (13485, 13785))
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
    wavelength_nm=_TOA_CENTRE,
    bandwidth_nm=_TOA_WIDTH,
    gsd_m=1000.0,
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
    # Sentinel-2 B04/B03/B02 (EuroSAT RGB's source); other cameras' R, G, B are close
    wavelength_nm=(_S2_CENTRE[3], _S2_CENTRE[2], _S2_CENTRE[1]),
    bandwidth_nm=(_S2_WIDTH[3], _S2_WIDTH[2], _S2_WIDTH[1]),
    gsd_m=10.0,
)

PRESETS: dict[str, BandPreset] = {p.name: p for p in (NAIP, SENTINEL2, SENTINEL2_L2A, EUROSAT, LANDSAT8, LANDSAT9,
                                                      TOA, HLS, RGB)}
#: other names of presets (Sentinel-2's L1C is the `sentinel2` preset; MODIS TOA the `toa` one)
ALIASES: dict[str, str] = {"sentinel2_l1c": "sentinel2", "modis_toa": "toa"}


def get_preset(name: str) -> BandPreset:
    """The preset called `name`, or a clear error listing the known ones."""
    try:
        return PRESETS[ALIASES.get(name, name)]
    except KeyError:
        raise KeyError(f"unknown band preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def describe_presets() -> list[str]:
    """One line per band preset (for `maekit domains`)."""
    lines = [f"preset {p.name:13s} {len(p.bands):2d} bands {','.join(p.bands)}: {p.description}"
             for p in PRESETS.values()]
    return lines + ["adapter WavelengthAdapter: any sensor, any band set (patch projections generated from each "
                    "band's wavelength; sensors by preset or YAML), configs/multisensor"]
