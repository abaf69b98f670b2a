"""`maekit embed`: embeddings as GeoParquet (chips, scene tiles) and Parquet (volume cases)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds

from maekit.cli import main
from maekit.domains.multispectral import MultispectralAdapter
from maekit.domains.multispectral.readers import read_chip, read_raster
from maekit.domains.volume import VolumeAdapter
from maekit.embeddings import pool_features, tile_windows
from maekit.pretrain.module import MAEPretrainModule
from maekit.weights import from_pretrained


def randomised_checkpoint(module: MAEPretrainModule, path: Path) -> Path:
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    torch.save({"state_dict": module.state_dict(),
                "maekit": {"adapter": module.adapter.config(), "size": "nano", "prefix": "mae."}}, path)
    return path


@pytest.fixture(scope="module")
def naip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    module = MAEPretrainModule(MultispectralAdapter(preset="naip", patch_size=8), size="nano")
    return randomised_checkpoint(module, tmp_path_factory.mktemp("ckpt") / "naip.ckpt")


def encoder_of(checkpoint: Path):  # noqa: ANN201
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_pretrained(checkpoint)


def direct_embedding(checkpoint: Path, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The encoder's mean-pooled features of one chip, computed here without `maekit embed`."""
    encoder = encoder_of(checkpoint)
    with torch.no_grad():
        x, tokens = encoder({"image": torch.from_numpy(image)[None], "valid": torch.from_numpy(valid)[None]})
        present = tokens.present.float()[..., None]
        return ((x * present).sum(1) / present.sum(1))[0].numpy()


def scene(path: Path, height: int = 72, width: int = 100) -> Path:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    data = np.clip(120 + 40 * np.sin(x / 7.0)[None] + rng.normal(0, 9, (4, height, width)), 1, 255).astype(np.uint8)
    data[:, :32, :32] = 0  # a nodata corner: the first tile has no valid pixel
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=4, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(350000.5, 5500000.0, 0.5, 0.5), nodata=0) as dst:
        dst.write(data)
        dst.descriptions = ("R", "G", "B", "NIR")
    return path


def test_chip_folder_gives_geoparquet_one_row_per_chip(naip_checkpoint: Path, naip_chips: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import geopandas as gpd
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "chips.parquet"
    assert main(["embed", str(naip_checkpoint), str(naip_chips), "--out", str(out), "--batch-size", "5"]) == 0
    assert "(GeoParquet)" in capsys.readouterr().out
    assert pq.read_schema(out).field("embedding").type == pa.list_(pa.float32(), 64)  # fixed size
    table = gpd.read_parquet(out)
    chips = sorted(naip_chips.rglob("*.tif"))
    assert len(table) == len(chips) and sorted(table["source"]) == [str(p) for p in chips]
    with rasterio.open(chips[0]) as src:
        crs = src.crs
    assert table.crs == crs
    for _, row in table.iloc[:: max(1, len(table) // 4)].iterrows():
        with rasterio.open(row["source"]) as src:
            assert np.allclose(row.geometry.bounds, (src.bounds.left, src.bounds.bottom, src.bounds.right,
                                                     src.bounds.top))
            assert (row["height"], row["width"], row["row_off"], row["col_off"]) == (src.height, src.width, 0, 0)
    row = table.iloc[3]
    assert len(row["embedding"]) == 64
    chip = read_chip(row["source"], ["R", "G", "B", "NIR"], nodata=0)
    expected = direct_embedding(naip_checkpoint, chip.image, chip.valid)
    assert np.abs(np.asarray(row["embedding"]) - expected).max() < 1e-5
    assert np.abs(np.asarray(table.iloc[0]["embedding"]) - expected).max() > 1e-4  # rows differ


def test_scene_tiles_follow_the_window_grid_with_footprints(naip_checkpoint: Path, tmp_path: Path) -> None:
    import geopandas as gpd

    path = scene(tmp_path / "scene.tif")
    out = tmp_path / "tiles.parquet"
    assert main(["embed", str(naip_checkpoint), str(path), "--out", str(out), "--tile", "32", "--stride", "24"]) == 0
    table = gpd.read_parquet(out)
    windows = tile_windows(72, 100, 32, 24)
    assert len(windows) == 3 * 4
    assert len(table) == len(windows) - 1  # the all-nodata corner tile is skipped
    with rasterio.open(path) as src:
        assert table.crs == src.crs
        transform = src.transform
    got = sorted(zip(table["row_off"], table["col_off"]))
    assert got == sorted(w for w in windows if w != (0, 0))
    for _, row in table.iterrows():
        window = Window(row["col_off"], row["row_off"], 32, 32)
        assert np.allclose(row.geometry.bounds, np.array(window_bounds(window, transform))[[0, 1, 2, 3]])
    row = table[(table["row_off"] == 40) & (table["col_off"] == 48)].iloc[0]
    tile = read_raster(path, ["R", "G", "B", "NIR"], window=Window(48, 40, 32, 32))
    expected = direct_embedding(naip_checkpoint, tile.image, tile.valid)
    assert np.abs(np.asarray(row["embedding"]) - expected).max() < 1e-5


def test_bad_inputs_get_one_clear_error(naip_checkpoint: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from maekit.domains.volume.samples import make_ct_dataset

    small = scene(tmp_path / "small.tif", height=40, width=100)
    assert main(["embed", str(naip_checkpoint), str(small), "--out", str(tmp_path / "a.parquet"), "--tile", "64"]) == 2
    assert "is 40x100 pixels, smaller than one 64x64 tile" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(naip_checkpoint), str(tmp_path / "empty"), "--out", str(tmp_path / "b.parquet")]) == 2
    assert "holds no chip files" in capsys.readouterr().err
    ct = make_ct_dataset(tmp_path / "ct", cases=1, size=16)
    assert main(["embed", str(naip_checkpoint), str(ct), "--out", str(tmp_path / "c.parquet")]) == 2
    assert "it holds volume data, but the checkpoint is a multispectral model" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob(".*parquet"))


def test_volume_cases_give_plain_parquet_one_row_per_case(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from maekit.domains.volume.readers import find_cases, load_case
    from maekit.domains.volume.samples import make_ct_dataset

    ct = make_ct_dataset(tmp_path / "ct", cases=2, size=16)
    module = MAEPretrainModule(VolumeAdapter(["ct"], patch_size=8), size="nano")
    ckpt = randomised_checkpoint(module, tmp_path / "ct.ckpt")
    out = tmp_path / "cases.parquet"
    assert main(["embed", str(ckpt), str(ct), "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert "geometry" not in table.column_names and b"geo" not in (table.schema.metadata or {})
    assert table.num_rows == 2 and table.column("case").to_pylist() == [c.name for c in find_cases(ct)]
    item = load_case(find_cases(ct)[0], ["ct"], "ct")
    image = item["image"]
    pads = [v for s in reversed(image.shape[1:]) for v in (0, (-s) % 8)]
    encoder = encoder_of(ckpt)
    with torch.no_grad():
        x, tokens = encoder({"image": torch.nn.functional.pad(image, pads)[None]})
        expected = pool_features(x, None, 0, "mean")[0].numpy()
    got = np.asarray(table.column("embedding").to_pylist()[0], dtype=np.float32)
    assert got.shape == (64,) and np.abs(got - expected).max() < 1e-5


def test_point_clouds_give_one_row_per_cloud(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from maekit.domains.pointcloud import PointCloudAdapter

    rng = np.random.default_rng(0)
    folder = tmp_path / "clouds"
    folder.mkdir()
    for name in ("a", "b", "c"):
        np.savetxt(folder / f"{name}.xyz", rng.normal(size=(300, 3)) * (1 + ord(name) % 3), fmt="%.5f")
    module = MAEPretrainModule(PointCloudAdapter(groups=8, group_size=16), size="nano")
    ckpt = randomised_checkpoint(module, tmp_path / "points.ckpt")
    out = tmp_path / "clouds.parquet"
    assert main(["embed", str(ckpt), str(folder), "--out", str(out), "--points", "256"]) == 0
    table = pq.read_table(out)
    assert table.column("source").to_pylist() == [str(folder / f"{n}.xyz") for n in "abc"]
    vectors = np.asarray(table.column("embedding").to_pylist())
    assert vectors.shape == (3, 64) and np.isfinite(vectors).all() and np.abs(vectors[0] - vectors[1]).max() > 1e-4
    from maekit.domains.pointcloud.readers import normalise_unit_sphere, read_points

    cloud = read_points(folder / "a.xyz")  # the first cloud, sampled as `embed` does (seed 0)
    xyz = normalise_unit_sphere(cloud.xyz).astype(np.float32)
    take = np.random.default_rng(0).choice(len(xyz), 256, replace=False)
    with torch.no_grad():
        x, _ = encoder_of(ckpt)({"points": torch.from_numpy(xyz[take])[None]})
    assert np.abs(vectors[0] - x.mean(1)[0].numpy()).max() < 1e-5
