"""Mixed-sensor data: the multi-sensor scene generator and MultiSensorDataModule's batches and errors."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from maekit.domains.multispectral import sensor_samples as ss
from maekit.domains.multispectral.multisensor import MultiSensorDataModule, SensorCollate
from maekit.domains.multispectral.sensors import load_sensor, sensor_from_dict
from maekit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 4-class scenes seen by NAIP, Sentinel-2, Landsat 8 and the YAML `dove8` sensor, 16 px."""
    from maekit.cli import cmd_sample_data

    out = tmp_path_factory.mktemp("multisensor")
    assert cmd_sample_data([str(out), "--preset", "multisensor", "--per-class", "3", "--val-per-class", "1",
                            "--size", "16", "--seed", "4"]) == 0
    return out


def _sources(root: Path, **extra: object) -> list[dict[str, object]]:
    return [{"root": str(root / "naip"), "sensor": "naip", **extra},
            {"root": str(root / "sentinel2"), "sensor": "sentinel2", **extra},
            {"root": str(root / "landsat8"), "sensor": "landsat8", **extra},
            {"root": str(root / "dove8"), "sensor": str(root / "dove8" / "sensor.yaml"), **extra}]


def _yaml_sensor(path: Path, bands: list[tuple[str, float, float]], gsd: float) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, "gsd_m": gsd, "bands": [
        {"name": n, "wavelength_nm": w, "bandwidth_nm": bw} for n, w, bw in bands]}))
    return path


# ----------------------------------------------------------------------------- generator
@pytest.mark.parametrize("trial", range(3))
def test_bands_are_simulated_at_their_wavelength(trial: int, tmp_path: Path) -> None:
    rng = random.Random(trial)
    bands = [(f"b{i}", rng.uniform(420, 2400), rng.uniform(8, 120)) for i in range(rng.randint(2, 6))]
    sensor = load_sensor(_yaml_sensor(tmp_path / "s.yaml", bands, 1.0))
    got = ss.band_reflectance(sensor)
    for row, (_, centre, width) in zip(got, bands):  # independent integration over a fine grid
        x = np.linspace(centre - 4 * width, centre + 4 * width, 4001)
        w = np.exp(-0.5 * ((x - centre) / (width / 2.3548)) ** 2)
        want = (ss.material_reflectance(x) * ss.atmosphere(x) * w).sum(-1) / w.sum()
        np.testing.assert_allclose(row, want, rtol=0.02, atol=2e-4)
    # physics the probe can use: vegetation is dark in red and bright in NIR, water dark in NIR
    s2 = ss.band_reflectance(load_sensor("sentinel2"))
    veg, water = ss.MATERIALS.index("vegetation"), ss.MATERIALS.index("water")
    names = load_sensor("sentinel2").band_names
    assert s2[names.index("B08"), veg] > 4 * s2[names.index("B04"), veg]
    assert s2[names.index("B08"), water] < 0.02 and s2[names.index("B10"), :].max() < 0.05  # cirrus band absorbed
    assert np.isnan(ss.band_reflectance(load_sensor("landsat8"))[-1]).all()  # TIRS B10 is thermal


@pytest.mark.parametrize("trial", range(3))
def test_sensors_see_the_same_scene_at_their_gsd(trial: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(trial)
    centre, width = float(rng.uniform(450, 2200)), float(rng.uniform(10, 80))
    fine = load_sensor(_yaml_sensor(tmp_path / "fine.yaml", [("x", centre, width)], float(rng.uniform(0.3, 4.9))))
    coarse = load_sensor(_yaml_sensor(tmp_path / "coarse.yaml", [("x", centre, width)], float(rng.uniform(20, 60))))
    size = 4 * int(rng.integers(3, 8))
    abundances = ss.scene_abundances(int(rng.integers(0, 4)), size, rng)
    np.testing.assert_allclose(abundances.sum(0), 1.0, atol=1e-9)
    a = ss.render(abundances, fine, rng, noise=0.0)
    b = ss.render(abundances, coarse, rng, noise=0.0)
    assert a.shape == (1, size, size) and b.shape == (1, size // 4, size // 4) and a.dtype == np.float32
    np.testing.assert_allclose(b, a.reshape(1, size // 4, 4, size // 4, 4).mean((2, 4)), rtol=1e-5)
    # integer presets: stored in raw units, raw 0 (nodata) never written
    raw = ss.render(abundances, load_sensor("landsat8"), rng)
    assert raw.dtype == np.uint16 and raw.min() >= 1
    temperature = raw[-1].astype(float) * 0.00341802 + 149.0
    assert 285 < temperature.mean() < 315


def test_sample_data_layout(scenes: Path) -> None:
    ids = {}
    for sensor, bands, side, dtype in (("naip", 4, 16, "uint8"), ("sentinel2", 13, 8, "uint16"),
                                       ("landsat8", 8, 4, "uint16"), ("dove8", 8, 16, "float32")):
        files = sorted((scenes / sensor).glob("*/*/*.tif"))
        ids[sensor] = sorted(f"{f.parent.parent.name}/{f.parent.name}/{f.name}" for f in files)
        assert len(files) == 4 * (3 + 1)
        with rasterio.open(files[0]) as src:
            assert (src.count, src.height, src.dtypes[0]) == (bands, side, dtype)
            spec = load_sensor(sensor if sensor != "dove8" else scenes / "dove8" / "sensor.yaml")
            assert src.res[0] == spec.gsd_m and list(src.descriptions) == spec.band_names
    assert ids["naip"] == ids["sentinel2"] == ids["landsat8"] == ids["dove8"]  # the same scenes, same labels
    assert load_sensor(scenes / "dove8" / "sensor.yaml") == sensor_from_dict(ss.DOVE8)  # the YAML sensor, written
    with pytest.raises(ConfigError, match="multiple of 4"):
        ss.make_multisensor_dataset(scenes / "bad", size=18)


# ----------------------------------------------------------------------------- datamodule
def test_batches_follow_the_contract(scenes: Path) -> None:
    dm = MultiSensorDataModule(_sources(scenes), task="classification", batch_size=2, stats="compute", seed=1)
    dm.setup("fit")
    assert dm.classes == sorted(ss.NAIP_CLASSES)
    seen: dict[str, int] = {}
    batches = list(dm.train_dataloader())
    for batch in batches:
        sensor = load_sensor(batch["sensor"] if batch["sensor"] != "dove8" else scenes / "dove8" / "sensor.yaml")
        c = len(sensor.bands)
        b, _, h, w = batch["image"].shape
        assert batch["image"].dtype == torch.float32 and batch["image"].shape[1] == c
        assert batch["bands"] == sensor.band_names
        assert batch["wavelengths"].tolist() == pytest.approx(sensor.wavelengths)
        assert batch["bandwidths"].tolist() == pytest.approx(sensor.bandwidths)
        assert batch["gsd_m"] == sensor.gsd_m and batch["mean"].shape == batch["std"].shape == (c,)
        assert batch["valid"].shape == (b, h, w) and batch["valid"].dtype == torch.bool
        assert batch["label"].shape == (b,)
        # the image is the file's raw values through the sensor's scale/offset (physical units)
        with rasterio.open(batch["path"][0]) as src:
            raw = torch.from_numpy(src.read().astype(np.float64))
        scale = torch.tensor(sensor.scale or [1.0] * c, dtype=torch.float64)[:, None, None]
        offset = torch.tensor(sensor.offset or [0.0] * c, dtype=torch.float64)[:, None, None]
        flipped = [raw, raw.flip(-1), raw.flip(-2), raw.flip(-1).flip(-2)]  # training flips
        first = batch["image"][0].double()
        assert any(torch.allclose(first, r * scale + offset, rtol=1e-5, atol=1e-4) for r in flipped)
        seen[batch["sensor"]] = seen.get(batch["sensor"], 0) + b
    assert seen == {"naip": 12, "sentinel2": 12, "landsat8": 12, "dove8": 12}
    # the order is a function of the run's seed; every batch one sensor
    assert [b["path"] for b in dm.train_dataloader()] == [b["path"] for b in batches]
    val = [b["sensor"] for b in dm.val_dataloader()]
    assert val == ["naip"] * 2 + ["sentinel2"] * 2 + ["landsat8"] * 2 + ["dove8"] * 2


def test_statistics_from_sensor_or_computed(scenes: Path) -> None:
    dm = MultiSensorDataModule(_sources(scenes)[:3] + [dict(_sources(scenes)[3], stats="compute")],
                               batch_size=4, stats="sensor", stats_files=1000)
    dm.setup("fit")
    for info, name in zip(dm.infos[:3], ("naip", "sentinel2", "landsat8")):
        assert info.mean == pytest.approx(load_sensor(name).mean) and info.std == pytest.approx(load_sensor(name).std)
    # computed: mean/std over every training chip's pixels (float32 reflectance, scale 1)
    chips = [rasterio.open(f).read().astype(np.float64) for f in dm.datasets["train"].parts[3].files]
    pixels = np.concatenate([c.reshape(c.shape[0], -1) for c in chips], axis=1)
    assert dm.infos[3].mean == pytest.approx(pixels.mean(1).tolist(), rel=1e-6)
    assert dm.infos[3].std == pytest.approx(pixels.std(1).tolist(), rel=1e-5)
    # a band subset keeps its own statistics and wavelengths
    sub = MultiSensorDataModule([{"root": str(scenes / "sentinel2"), "sensor": "sentinel2", "bands": ["B08", "B04"]}],
                                batch_size=4)
    sub.setup("fit")
    s2 = load_sensor("sentinel2")
    assert sub.infos[0].wavelengths == (s2.band("B08").wavelength_nm, s2.band("B04").wavelength_nm)
    assert sub.infos[0].mean == (s2.mean[7], s2.mean[3])
    assert next(iter(sub.val_dataloader()))["image"].shape[1] == 2


def test_clear_errors(scenes: Path, tmp_path: Path) -> None:
    # a file of another sensor under a root: named, with both band counts
    mixed = tmp_path / "naip"
    shutil.copytree(scenes / "naip", mixed)
    stray = next((scenes / "sentinel2" / "train").glob("*/*.tif"))
    shutil.copy(stray, mixed / "train" / "forest" / "stray.tif")
    with pytest.raises(DataError, match=r"stray\.tif.*has 13 bands but its source's sensor 'naip' has 4"):
        MultiSensorDataModule([{"root": str(mixed), "sensor": "naip"}]).setup("fit")
    with pytest.raises(ConfigError, match=r"sources\[1\] \(.*landsat8\).*unknown sensor 'landsat42'"):
        MultiSensorDataModule([{"root": str(scenes / "naip"), "sensor": "naip"},
                               {"root": str(scenes / "landsat8"), "sensor": "landsat42"}]).setup("fit")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}.*no chip files"):
        MultiSensorDataModule([{"root": str(empty), "sensor": "naip"}]).setup("fit")
    with pytest.raises(DataError, match="does not exist"):
        MultiSensorDataModule([{"root": str(tmp_path / "nowhere"), "sensor": "naip"}]).setup("fit")
    with pytest.raises(ConfigError, match=r"gives no mean/std; set `stats: compute`"):
        MultiSensorDataModule([_sources(scenes)[3]], stats="sensor").setup("fit")
    with pytest.raises(ConfigError, match=r"unknown keys \['sensr'\]"):
        MultiSensorDataModule([{"root": "x", "sensor": "naip", "sensr": 1}])
    with pytest.raises(ConfigError, match="with `root` and `sensor`"):
        MultiSensorDataModule([{"root": "x"}])
    nogsd = tmp_path / "nogsd.yaml"
    nogsd.write_text(yaml.safe_dump({"name": "nogsd", "bands": [{"name": "a", "wavelength_nm": 500,
                                                                  "bandwidth_nm": 10}]}))
    with pytest.raises(ConfigError, match="gives no gsd_m"):
        MultiSensorDataModule([{"root": str(scenes / "naip"), "sensor": str(nogsd)}]).setup("fit")
    renamed = tmp_path / "renamed"
    shutil.copytree(scenes / "landsat8", renamed)
    (renamed / "train" / "urban").rename(renamed / "train" / "town")
    (renamed / "val" / "urban").rename(renamed / "val" / "town")
    with pytest.raises(DataError, match="every source needs the same class folders"):
        MultiSensorDataModule([{"root": str(scenes / "naip"), "sensor": "naip"},
                               {"root": str(renamed), "sensor": "landsat8"}], task="classification").setup("fit")
    # a loader without the bucketing sampler mixes sensors: the collate refuses the batch
    dm = MultiSensorDataModule(_sources(scenes)[:2], batch_size=2)
    dm.setup("fit")
    train = dm.datasets["train"]
    with pytest.raises(DataError, match=r"a batch mixes sensors \['naip', 'sentinel2'\]"):
        SensorCollate(dm.infos)([train[0], train[len(train) - 1]])


# ----------------------------------------------------------------------------- training
def test_one_wavelength_model_trains_on_three_sensors(scenes: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning as L

    from maekit.cli import main
    from maekit.domains.multispectral import WavelengthAdapter
    from maekit.pretrain import MAEPretrainModule

    class Record(L.Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[str, tuple[int, ...], float]] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            self.seen.append((batch["sensor"], tuple(batch["image"].shape[1:]), float(outputs["loss"])))

    L.seed_everything(3)
    dm = MultiSensorDataModule(_sources(scenes)[:3], batch_size=4, stats="compute")
    module = MAEPretrainModule(WavelengthAdapter(patch_size=4, code_width=16, decoder_rank=4), size="nano",
                               decoder_width=32, decoder_depth=1, decoder_heads=2, lr=1e-3, figure_every_n_epochs=0)
    record = Record()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[record], default_root_dir=tmp_path)
    trainer.fit(module, dm)
    shapes = {sensor: shape for sensor, shape, _ in record.seen}
    assert shapes == {"naip": (4, 16, 16), "sentinel2": (13, 8, 8), "landsat8": (8, 4, 4)}  # one model, 3 band sets
    assert len(record.seen) == 3 * (12 // 4) and all(np.isfinite(loss) for _, _, loss in record.seen)
    # the shipped mixed-sensor config runs through the CLI
    monkeypatch.setattr("sys.argv", ["maekit"])
    sources = "[" + ", ".join(f"{{root: {s['root']}, sensor: {s['sensor']}}}" for s in _sources(scenes)[:3]) + "]"
    assert main(["fit", "-c", "multisensor/pretrain_mixed", "--data.sources", sources, "--data.batch_size", "4",
                 "--data.num_workers", "0", "--model.size", "nano", "--model.decoder_width", "32",
                 "--model.decoder_depth", "1", "--model.decoder_heads", "2",
                 "--model.adapter.init_args.patch_size", "4",
                 "--trainer.max_steps", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(tmp_path / "cli"), "--trainer.logger", "false",
                 "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0"]) == 0
    assert list((tmp_path / "cli").rglob("last.ckpt"))
