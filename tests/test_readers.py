"""Raster readers and datamodules: generated chips, bad inputs, real sample files, torchgeo interop."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from maekit.datasets import ChipDataModule, RandomWindowDataset, read_chip, read_raster
from maekit.datasets.samples import NAIP_CLASSES, make_large_raster
from maekit.domains import MultispectralAdapter
from maekit.errors import ConfigError, DataError

from .conftest import REALDATA

NAIP_BANDS = ["R", "G", "B", "NIR"]


def write_tif(path: Path, data: np.ndarray, nodata: float | None = None, **extra: object) -> Path:
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                   dtype=data.dtype.name, crs="EPSG:26914", transform=from_origin(0, 0, 1, 1), nodata=nodata)
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_generated_chips_are_georeferenced_geotiffs(naip_chips: Path) -> None:
    files = sorted((naip_chips / "train" / "orchard").glob("*.tif"))
    assert len(files) == 6
    with rasterio.open(files[0]) as src:
        assert src.count == 4 and src.dtypes[0] == "uint8" and src.crs.to_epsg() == 26914
        assert src.nodata == 0 and src.descriptions == tuple(NAIP_BANDS)
    chip = read_chip(files[0], NAIP_BANDS, ["NIR", "R"])
    assert chip.image.shape == (2, 32, 32) and chip.image.dtype == np.uint8
    with rasterio.open(files[0]) as src:
        assert np.array_equal(chip.image[0], src.read(4))


def test_datamodule_splits_classes_and_labelled_subset(naip_chips: Path) -> None:
    dm = ChipDataModule(str(naip_chips), task="classification", batch_size=4, labels_per_class=2)
    dm.setup("fit")
    assert dm.classes == sorted(NAIP_CLASSES) and dm.num_classes == 4
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["val"]) == 8
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 4, 32, 32)
    assert batch["valid"].dtype == torch.bool and batch["label"].tolist() == [0, 0, 1, 1]


def test_nodata_pixels_become_absent_tokens(naip_chips: Path) -> None:
    dm = ChipDataModule(str(naip_chips), task="pretrain", batch_size=64, flips=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    nodata = (batch["image"] == 0).all(1)
    assert nodata.any(), "the fixture should contain nodata wedges"
    assert torch.equal(batch["valid"], ~nodata)
    tokens = MultispectralAdapter(preset="naip", patch_size=8).tokenize(batch)
    assert tokens.may_be_absent and not tokens.present.all()


def test_wrong_band_count_names_the_file(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "three.tif", np.ones((3, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"three\.tif: has 3 bands but the configuration describes 4"):
        read_chip(path, NAIP_BANDS)


def test_unknown_band_names_the_file(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "four.tif", np.ones((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"four\.tif: unknown band 'SWIR'"):
        read_chip(path, NAIP_BANDS, ["R", "SWIR"])
    with pytest.raises(ConfigError, match="unknown band 'SWIR'"):
        ChipDataModule(str(tmp_path), bands=["SWIR"])


def test_truncated_geotiff_names_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = write_tif(tmp_path / "cut.tif", rng.integers(1, 255, (4, 256, 256), dtype=np.uint8),
                     tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.tif: (is corrupt or truncated|cannot be opened)"):
        read_chip(path, NAIP_BANDS)
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match=r"garbage\.tif: cannot be opened as a raster"):
        read_chip(garbage, NAIP_BANDS)


def test_all_nodata_chip_names_the_file(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "empty.tif", np.zeros((4, 8, 8), np.uint8), nodata=0)
    with pytest.raises(DataError, match=r"empty\.tif: has no valid pixel"):
        read_chip(path, NAIP_BANDS)


def test_nan_without_nodata_is_an_error_but_declared_nan_is_nodata(tmp_path: Path) -> None:
    data = np.ones((2, 8, 8), np.float32)
    data[0, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"nan\.tif: contains 1 NaN"):
        read_chip(write_tif(tmp_path / "nan.tif", data), ["a", "b"])
    chip = read_chip(write_tif(tmp_path / "nan_nodata.tif", data, nodata=float("nan")), ["a", "b"])
    assert not chip.valid[0, 0] and chip.valid.sum() == 63


def test_npz_chips_and_bad_arrays(toa_chips: Path, tmp_path: Path) -> None:
    from maekit.datasets.bands import TOA

    files = sorted(toa_chips.rglob("*.npz"))
    chip = read_chip(files[0], TOA.bands)
    assert chip.image.shape == (14, 16, 16) and chip.image.dtype == np.float32
    np.save(tmp_path / "flat.npy", np.zeros((16, 16), np.float32))
    with pytest.raises(DataError, match=r"flat\.npy: holds an array of shape \(16, 16\)"):
        read_chip(tmp_path / "flat.npy", TOA.bands)


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ChipDataModule(str(tmp_path / "nope")).setup("fit")
    with pytest.raises(DataError, match="no chip files"):
        ChipDataModule(str(tmp_path)).setup("fit")


def test_segmentation_layout_and_missing_mask(naip_segmentation: Path, tmp_path: Path) -> None:
    dm = ChipDataModule(str(naip_segmentation), task="segmentation", batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].shape == (2, 32, 32) and batch["mask"].dtype == torch.long
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 3, 255}
    broken = tmp_path / "seg"
    shutil.copytree(naip_segmentation, broken)
    victim = sorted((broken / "train" / "masks").glob("*.tif"))[0]
    victim.unlink()
    with pytest.raises(DataError, match=f"{victim.stem}.tif: has no mask"):
        ChipDataModule(str(broken), task="segmentation").setup("fit")


def test_random_windows_from_a_large_raster(tmp_path: Path) -> None:
    path = make_large_raster(tmp_path / "m_3809701_ne_14_060_20190811.tif", size=512, tile=128)
    ds = RandomWindowDataset([path], NAIP_BANDS, ["R", "G", "B"], size=64, length=5, seed=0)
    a, b = ds[3], ds[3]
    assert a["image"].shape == (3, 64, 64) and torch.equal(a["image"], b["image"])
    assert not torch.equal(ds[0]["image"], ds[1]["image"])
    with pytest.raises(DataError, match="smaller than the window"):
        RandomWindowDataset([path], NAIP_BANDS, None, size=1024, length=1)


def test_torchgeo_naip_with_geo_sampler(tmp_path: Path) -> None:
    torchgeo = pytest.importorskip("torchgeo.datasets")
    from maekit.datasets import GeoSamplerDataModule

    make_large_raster(tmp_path / "m_3809701_ne_14_060_20190811.tif", size=256, tile=128)
    dm = GeoSamplerDataModule(dataset=torchgeo.NAIP(paths=str(tmp_path)), size=64, samples_per_epoch=4, batch_size=2)
    assert dm.bands == NAIP_BANDS
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 4, 64, 64) and batch["valid"].shape == (2, 64, 64)
    tokens = MultispectralAdapter(preset="naip", patch_size=16).tokenize(batch)
    assert tokens.values.shape[:2] == (2, 32)
    assert len(list(dm.val_dataloader())) == 8  # a 4x4 grid of 64-pixel patches, 2 per batch


# ------------------------------------------------------------------ real files (../shared)
REAL_RS = REALDATA / "remote_sensing"
needs_real = pytest.mark.skipif(not REAL_RS.is_dir(), reason=f"real sample files not present at {REAL_RS}")


@needs_real
def test_real_landsat_rgb_with_nodata_collar() -> None:
    chip = read_chip(REAL_RS / "RGB.byte.tif", ["R", "G", "B"])
    assert chip.image.shape == (3, 718, 791) and chip.image.dtype == np.uint8
    assert 0.3 < chip.valid.mean() < 0.95  # the black collar is nodata
    adapter = MultispectralAdapter(preset="naip", patch_size=16, input_bands=["R", "G", "B"])
    crop = {"image": torch.from_numpy(chip.image[None, :, :704, :784].copy()),
            "valid": torch.from_numpy(chip.valid[None, :704, :784].copy())}
    tokens = adapter.tokenize(crop)
    assert tokens.values.shape[1] == 44 * 49 and 0 < tokens.present.float().mean() < 1


@needs_real
def test_real_sentinel2_13_bands_windowed() -> None:
    from maekit.datasets.bands import SENTINEL2

    path = REAL_RS / "sentinel2_L1C_T60HWB_20201002_13band_264px.tif"
    chip = read_raster(path, SENTINEL2.bands, ["B04", "B03", "B02", "B08"], window=rasterio.windows.Window(0, 0, 64, 64))
    assert chip.image.shape == (4, 64, 64) and chip.image.dtype == np.int32  # uint16 widened
    adapter = MultispectralAdapter(preset="sentinel2", patch_size=8, input_bands=["B04", "B03", "B02", "B08"])
    tokens = adapter.tokenize({"image": torch.from_numpy(chip.image[None])})
    assert (tokens.group == 0).all() and torch.isfinite(tokens.values).all()
    with pytest.raises(DataError, match="has 13 bands but the configuration describes 4"):
        read_chip(path, NAIP_BANDS)


@needs_real
def test_real_aerial_rgb_reads() -> None:
    chip = read_chip(REAL_RS / "hro_colorado_aerial_rgb_15cm.tif", ["R", "G", "B"])
    assert chip.image.shape[0] == 3 and chip.valid.any()


def test_errors_in_loader_workers_keep_their_file_and_type(tmp_path: Path) -> None:
    from maekit.datasets import ChipDataset

    path = write_tif(tmp_path / "three.tif", np.ones((3, 8, 8), np.uint8))
    loader = torch.utils.data.DataLoader(ChipDataset([path], NAIP_BANDS), num_workers=1)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    assert info.value.path == str(path) and info.value.problem.startswith("has 3 bands")


def test_corrupt_npz_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "cut.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"cut\.npz: cannot be read as a numpy array"):
        read_chip(bad, ["a"])


def test_windows_differ_between_ranks_and_repeat_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_large_raster(tmp_path / "big.tif", size=512, tile=128)

    def first_window(rank: int) -> torch.Tensor:
        monkeypatch.setenv("RANK", str(rank))
        torch.manual_seed(0)
        return RandomWindowDataset([path], NAIP_BANDS, None, size=32, length=4)[0]["image"]

    assert torch.equal(first_window(0), first_window(0))
    assert not torch.equal(first_window(0), first_window(1))


def test_train_folder_without_val_folder_is_split(naip_chips: Path, tmp_path: Path) -> None:
    shutil.copytree(naip_chips / "train", tmp_path / "train")
    dm = ChipDataModule(str(tmp_path), task="classification", val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 18 and len(dm.datasets["val"]) == 6
