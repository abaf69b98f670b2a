"""Sensor metadata: every band preset's wavelengths/bandwidths/GSD, and sensors described in YAML."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from maekit.domains.multispectral.spec import PRESETS, get_preset
from maekit.domains.multispectral.sensors import BandSpec, SensorSpec, load_sensor, sensor_from_preset, sensor_names
from maekit.errors import ConfigError, DataError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_records_wavelength_bandwidth_and_gsd(name: str) -> None:
    p = PRESETS[name]
    assert len(p.wavelength_nm) == len(p.bands) == len(p.bandwidth_nm)
    assert all(w > 0 for w in p.wavelength_nm) and all(b > 0 for b in p.bandwidth_nm)
    assert p.gsd_m is not None and p.gsd_m > 0
    # a band's response is narrower than its centre: no edges swapped, no µm/nm mix-up
    assert all(b < w for w, b in zip(p.wavelength_nm, p.bandwidth_nm))
    sensor = load_sensor(name)
    assert sensor.band_names == list(p.bands) and sensor.gsd_m == p.gsd_m
    assert sensor.mean == tuple(p.mean) and sensor.std == tuple(p.std)


def test_published_band_centres() -> None:
    """Spot checks against the published tables (ESA S2 MSI, USGS Landsat 8-9, NASA MODIS, Leica ADS100)."""
    s2 = load_sensor("sentinel2_l1c")
    assert s2.band("B04").wavelength_nm == pytest.approx(664.6) and s2.band("B12").bandwidth_nm == 175
    assert s2.band("B8A").wavelength_nm == pytest.approx(864.7) and s2.band("B08").bandwidth_nm == 106
    l2a = load_sensor("sentinel2_l2a")
    assert "B10" not in l2a.band_names and len(l2a.bands) == 12
    assert l2a.band("B11").wavelength_nm == s2.band("B11").wavelength_nm
    for name in ("landsat8", "landsat9"):
        ls = load_sensor(name)
        assert ls.band("B4").wavelength_nm == 655 and ls.band("B4").bandwidth_nm == 30
        assert ls.band("B10").wavelength_nm == pytest.approx(10895) and ls.gsd_m == 30
    modis = load_sensor("modis_toa")
    assert modis.band("b01").wavelength_nm == 645 and modis.band("b26").wavelength_nm == 1375
    assert modis.band("b31").bandwidth_nm == 500 and modis.gsd_m == 1000
    naip = load_sensor("naip")
    assert [round(w) for w in naip.wavelengths] == [635, 555, 465, 845] and naip.gsd_m == pytest.approx(0.6)
    hls = load_sensor("hls")
    assert hls.band("NIR_NARROW").wavelength_nm == 865 and hls.gsd_m == 30
    assert load_sensor("eurosat").wavelengths == s2.wavelengths
    assert load_sensor("rgb").wavelengths == [s2.band(b).wavelength_nm for b in ("B04", "B03", "B02")]
    assert get_preset("sentinel2_l1c") is get_preset("sentinel2")
    assert {"naip", "sentinel2", "sentinel2_l2a", "landsat8", "landsat9", "toa", "hls", "eurosat",
            "rgb"} <= set(sensor_names())


def _random_sensor(rng: random.Random, n: int) -> dict:
    return {
        "name": f"cam{rng.randrange(1000)}",
        "gsd_m": round(rng.uniform(0.05, 500), 3),
        "bands": [{"name": f"band{i}_{rng.randrange(99)}", "wavelength_nm": round(rng.uniform(350, 13000), 1),
                   "bandwidth_nm": round(rng.uniform(5, 300), 1)} for i in range(n)],
        "mean": [round(rng.uniform(0, 1), 3) for _ in range(n)],
        "std": [round(rng.uniform(0.01, 1), 3) for _ in range(n)],
    }


def test_yaml_sensor_round_trip(tmp_path: Path) -> None:
    rng = random.Random(1234)
    for trial in range(5):
        data = _random_sensor(rng, rng.randint(1, 9))
        path = tmp_path / f"s{trial}.yaml"
        path.write_text(yaml.safe_dump(data))
        sensor = load_sensor(path)
        assert sensor.name == data["name"] and sensor.gsd_m == pytest.approx(data["gsd_m"])
        assert sensor.band_names == [b["name"] for b in data["bands"]]
        assert sensor.wavelengths == pytest.approx([b["wavelength_nm"] for b in data["bands"]])
        assert sensor.bandwidths == pytest.approx([b["bandwidth_nm"] for b in data["bands"]])
        assert list(sensor.mean) == pytest.approx(data["mean"]) and sensor.scale is None
        assert load_sensor(str(path)) == sensor


@pytest.mark.parametrize("change, message", [
    (lambda d: d["bands"][1].pop("wavelength_nm"), r"band 'band1_\d+' has no `wavelength_nm`"),
    (lambda d: d["bands"][0].update(bandwidth_nm=None), r"band 'band0_\d+' has no `bandwidth_nm`"),
    (lambda d: d["bands"][2].update(wavelength_nm=-5.0), "wavelength_nm -5.0; it must be a positive"),
    (lambda d: d["bands"][2].update(bandwidth_nm=0), "bandwidth_nm 0; it must be a positive"),
    (lambda d: d.update(gsd_m=0), "gsd_m is 0"),
    (lambda d: d["bands"][2].update(name=d["bands"][0]["name"]), "band names repeat"),
    (lambda d: d.update(mean=d["mean"][:-1]), "mean has 2 values but there are 3 bands"),
    (lambda d: d.update(std=[1.0, 0.0, 1.0]), "std must be positive"),
    (lambda d: d.update(bands=[]), "non-empty list"),
    (lambda d: d.update(colour="red"), r"unknown keys \['colour'\]"),
    (lambda d: d["bands"][0].update(wavelength="x"), "unknown keys"),
])
def test_bad_sensor_files_name_the_file_and_problem(tmp_path: Path, change, message: str) -> None:
    data = _random_sensor(random.Random(7), 3)
    change(data)
    path = tmp_path / "broken_sensor.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DataError, match=message) as info:
        load_sensor(path)
    assert info.value.path == str(path)


def test_unknown_sensor_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown sensor 'sentinel3'"):
        load_sensor("sentinel3")
    with pytest.raises(DataError, match="no such sensor file"):
        load_sensor(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("bands: [unclosed")
    with pytest.raises(DataError, match="not valid YAML"):
        load_sensor(bad)


def test_sensor_spec_validates_in_python() -> None:
    with pytest.raises(ConfigError, match="band names repeat"):
        SensorSpec("x", (BandSpec("a", 500, 10), BandSpec("a", 600, 10)))
    with pytest.raises(ConfigError, match="wavelength_nm 0"):
        SensorSpec("x", (BandSpec("a", 0, 10),))
    sensor = sensor_from_preset("naip")
    with pytest.raises(ConfigError, match="band 'SWIR' has no known wavelength"):
        sensor.select(["R", "SWIR"])
    assert [b.name for b in sensor.select(["NIR", "R"])] == ["NIR", "R"]
