"""Predicting over inputs larger than the training crop: tiled GeoTIFF scenes, sliding-window
NIfTI volumes, chunked point-cloud scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import Tensor, nn

from maekit.finetune.tiled import blend_window, cmd_predict_scene, predict_raster, tile_starts

from .conftest import CPU_TRAINER, REPO, TINY_MODEL

HEIGHT, WIDTH, TILE, OVERLAP = 150, 200, 32, 8


def _scene(path: Path, seed: int = 0) -> Path:
    """A 4-band uint8 scene larger than the crop, on an unusual grid, with a nodata corner."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    field = np.sin(x / 7.0) + np.cos(y / 5.0) + 0.3 * rng.standard_normal((HEIGHT, WIDTH))
    data = np.clip(120 + 40 * field[None] + rng.normal(0, 5, (4, HEIGHT, WIDTH)), 1, 255).astype(np.uint8)
    data[:, (x + y) < 40] = 0  # nodata collar
    with rasterio.open(path, "w", driver="GTiff", height=HEIGHT, width=WIDTH, count=4, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(350000.5, 5500000.0, 0.5, 0.5), nodata=0) as dst:
        dst.write(data)
        dst.descriptions = ("R", "G", "B", "NIR")
    return path


class LocalConv(nn.Module):
    """A fixed 3x3 convolution: every output pixel depends on its 3x3 neighbourhood only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return 4 * self.conv(batch["image"].float() / 255.0)


class TileRamp(nn.Module):
    """Output depends on the position inside the tile (as real models' edges do): naive stitching
    puts a step at every tile border."""

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        image = batch["image"].float() / 255.0
        w = image.shape[-1]
        ramp = torch.linspace(-2.0, 2.0, w).expand_as(image[:, 0])
        logit = ramp + 0.2 * (image[:, 0] - 0.5)
        return torch.stack([torch.zeros_like(logit), logit], 1)


def test_tile_layout_covers_every_pixel() -> None:
    assert tile_starts(200, 32, 24) == [0, 24, 48, 72, 96, 120, 144, 168]
    assert tile_starts(20, 32, 24) == [0]
    w = blend_window(32, 8)
    assert w.min() > 0 and w[8:24].tolist() == [1.0] * 16
    np.testing.assert_allclose(w[24:] + w[:8], 1.0, atol=1e-6)  # neighbours 24 apart sum to one


def test_tiled_prediction_keeps_the_grid_and_nodata_and_matches_the_whole_scene(tmp_path: Path) -> None:
    scene = _scene(tmp_path / "scene.tif")
    model = LocalConv()
    result = predict_raster(model, scene, tmp_path / "out", num_classes=3, tile=TILE, overlap=OVERLAP,
                            batch_size=5, probabilities=True)
    assert result.tiles > 30  # much larger than one crop
    with rasterio.open(scene) as src, rasterio.open(result.classes) as cls, \
            rasterio.open(result.probabilities) as prob:
        for out in (cls, prob):
            assert out.crs == src.crs and out.transform == src.transform
            assert (out.height, out.width) == (src.height, src.width)
        nodata = (src.read() == src.nodata).all(0)
        labels, probs = cls.read(1), prob.read()
        assert cls.nodata == 255 and np.isnan(prob.nodata)
        image = src.read()
    assert nodata.any() and (labels[nodata] == 255).all() and (labels[~nodata] < 3).all()
    assert np.isnan(probs[:, nodata]).all() and np.isfinite(probs[:, ~nodata]).all()
    with torch.no_grad():
        whole = model({"image": torch.from_numpy(image)[None]}).softmax(1)[0].numpy()
    diff = np.abs(probs[:, ~nodata] - whole[:, ~nodata])
    assert diff.max() < 0.02 and diff.mean() < 1e-3  # only tile edges (weight ~0.01) differ, barely
    agree = (labels[~nodata] == whole.argmax(0)[~nodata]).mean()
    assert agree > 0.995
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_scene_smaller_than_a_tile_and_unreadable_scenes(tmp_path: Path) -> None:
    from maekit.errors import DataError

    small = tmp_path / "small.tif"
    with rasterio.open(small, "w", driver="GTiff", height=20, width=25, count=4, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(10.0, 50.0, 1e-4, 1e-4)) as dst:
        dst.write(np.full((4, 20, 25), 90, np.uint8))
    result = predict_raster(LocalConv(), small, tmp_path / "out", num_classes=3, tile=TILE)
    with rasterio.open(result.classes) as out:
        assert out.shape == (20, 25) and out.crs.to_epsg() == 4326 and (out.read(1) < 3).all()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(DataError, match="broken.tif: cannot be opened as a raster"):
        predict_raster(LocalConv(), broken, tmp_path / "out", num_classes=3, tile=TILE)
    assert not (tmp_path / "out" / "broken_classes.tif").exists()


def _max_step(probs: np.ndarray, valid: np.ndarray) -> float:
    """Largest jump between horizontally or vertically adjacent valid pixels."""
    p = probs[1]
    dx = np.abs(np.diff(p, axis=1))[valid[:, 1:] & valid[:, :-1]]
    dy = np.abs(np.diff(p, axis=0))[valid[1:] & valid[:-1]]
    return float(max(dx.max(), dy.max()))


def test_blending_removes_seams_that_naive_stitching_leaves(tmp_path: Path) -> None:
    scene = _scene(tmp_path / "scene.tif", seed=1)
    steps = {}
    for blend in ("cosine", "none"):
        result = predict_raster(TileRamp(), scene, tmp_path / blend, num_classes=2, tile=TILE, overlap=OVERLAP,
                                probabilities=True, blend=blend)
        with rasterio.open(result.probabilities) as prob:
            probs = prob.read()
        steps[blend] = _max_step(probs, np.isfinite(probs[0]))
    # within a tile the ramp moves p by < 0.04 per pixel; the flat average jumps at tile borders
    assert steps["none"] > 0.25
    assert steps["cosine"] < 0.5 * steps["none"] and steps["cosine"] < 0.15


def test_predict_scene_cli_from_a_finetuned_checkpoint(naip_segmentation: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from maekit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-c", str(REPO / "configs" / "naip" / "segment.yaml"), "--data.root", str(naip_segmentation),
                 "--data.num_workers", "0", "--data.batch_size", "4", "--model.adapter.init_args.patch_size", "8",
                 "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1", *TINY_MODEL, *CPU_TRAINER,
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]) == 0
    ckpt = tmp_path / "runs" / "naip_segment" / "version_0" / "checkpoints" / "last.ckpt"
    scene = _scene(tmp_path / "scene.tif", seed=2)
    with rasterio.open(scene, "r+") as dst:  # NAIP band names, as the model was trained on
        dst.descriptions = ("R", "G", "B", "NIR")
    assert cmd_predict_scene([str(ckpt), str(scene), "--out", str(tmp_path / "pred"), "--tile", "32",
                              "--overlap", "8", "--batch-size", "16", "--device", "cpu"]) == 0
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "pred" / "scene_classes.tif") as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        nodata = (src.read() == 0).all(0)
        labels = out.read(1)
    assert (labels[nodata] == 255).all() and (labels[~nodata] < 4).all()
    with pytest.raises(Exception, match="patch size"):
        cmd_predict_scene([str(ckpt), str(scene), "--out", str(tmp_path / "pred"), "--tile", "30"])


# ---------------------------------------------------------------------------------------- volumes
def _oblique_ct(tmp_path: Path) -> Path:
    """Two CT cases; the first re-saved on an LPS-like grid with anisotropic spacing and an offset
    origin, so writing on the model's RAS grid would give another affine and shape."""
    import nibabel as nib

    from maekit.datasets.medical_samples import make_ct_dataset

    root = make_ct_dataset(tmp_path / "ct", cases=2, size=20, spacing=1.5, seed=3)
    affine = np.array([[-1.5, 0, 0, 30.0], [0, -1.2, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    for name in ("ct_000.nii.gz", "ct_000_seg.nii.gz"):
        img = nib.load(str(root / name))
        data = np.asarray(img.dataobj)[:, :, 2:18]  # not cubic either
        out = nib.Nifti1Image(data, affine)
        out.header.set_sform(affine, code=1)
        out.header.set_qform(affine, code=1)
        nib.save(out, str(root / name))
    return root


def test_volume_label_writer_puts_labels_back_on_the_source_grid(tmp_path: Path) -> None:
    """The true labels, loaded onto the RAS model grid and written back, equal the source file."""
    import nibabel as nib

    from maekit.datasets.medical import VolumeDataModule
    from maekit.finetune.volume_writers import VolumeSegmentationWriter

    root = _oblique_ct(tmp_path)
    dm = VolumeDataModule(str(root), modalities=["ct"], kind="ct", labels=[0, 1, 2, 3], val_fraction=1,
                          val_whole_volumes=True, roi_size=[16, 16, 16])
    dm.setup("predict")
    writer = VolumeSegmentationWriter(str(tmp_path / "pred"))

    class Holder:  # what the writer reads from the trainer
        datamodule = dm

    for batch in dm.predict_dataloader():
        writer.write_on_batch_end(Holder(), None, batch["mask"], None, batch, 0, 0)  # type: ignore[arg-type]
    for case in ("ct_000", "ct_001"):
        source = nib.load(str(root / f"{case}_seg.nii.gz"))
        written = nib.load(str(tmp_path / "pred" / f"{case}_pred.nii.gz"))
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
        np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(source.dataobj))


def test_maekit_predict_writes_sliding_window_label_maps_with_the_source_affine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nibabel as nib

    from maekit.cli import main

    root = _oblique_ct(tmp_path)
    monkeypatch.chdir(tmp_path)
    # at 1.5 mm the model grid differs from case 0's (1.5 x 1.2 x 2 mm, LPS); roi 16 < the volume: sliding window
    assert main(["predict", "-c", str(REPO / "configs" / "ct" / "segment.yaml"), "--data.root", str(root),
                 "--data.roi_size", "[16,16,16]", "--data.num_workers", "0", "--data.val_fraction", "1",
                 "--data.pixdim", "[1.5,1.5,1.5]", "--model.roi_size", "[16,16,16]", "--model.overlap", "0.25",
                 "--model.feature_size", "8",
                 "--model.adapter.init_args.patch_size", "8", *TINY_MODEL, *CPU_TRAINER]) == 0
    out = tmp_path / "runs" / "ct_segment" / "version_0" / "predictions"
    for case in ("ct_000", "ct_001"):
        source = nib.load(str(root / f"{case}.nii.gz"))
        written = nib.load(str(out / f"{case}_pred.nii.gz"))
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
        assert written.header.get_zooms() == source.header.get_zooms()
        assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2, 3}
    assert not list(out.glob(".*"))


# ----------------------------------------------------------------------------------- point scenes
def _lidar_like_scene(rng: np.random.Generator, count: int = 6000) -> np.ndarray:
    """(count, 3) a 47 x 31 m ground plane with a few box 'buildings' and round 'trees'."""
    xy = rng.uniform([0, 0], [47.0, 31.0], size=(count, 2))
    z = 0.05 * rng.standard_normal(count)
    for cx, cy in ((10, 8), (30, 20)):
        roof = (np.abs(xy[:, 0] - cx) < 4) & (np.abs(xy[:, 1] - cy) < 3)
        z[roof] = 6.0
    tree = ((xy - [38, 7]) ** 2).sum(1) < 9
    z[tree] = 4 + rng.uniform(0, 2, int(tree.sum()))
    return np.concatenate([xy, z[:, None]], 1).astype(np.float32)


def test_chunk_grid_covers_every_point_within_its_chunk() -> None:
    from maekit.finetune.point_scene import chunk_grid

    xyz = _lidar_like_scene(np.random.default_rng(0))
    chunks = chunk_grid(xyz, chunk_size=10.0, overlap=2.0)
    seen = np.zeros(len(xyz), dtype=int)
    for chunk in chunks:
        plane = xyz[chunk.index, :2]
        assert ((plane >= np.array(chunk.origin) - 1e-4) & (plane < np.array(chunk.origin) + 10.0 + 1e-4)).all()
        seen[chunk.index] += 1
    assert seen.min() >= 1 and seen.max() <= 4  # overlaps: at most 2 x 2 chunks share a point
    assert (seen > 1).any() and len(chunks) == 6 * 4


def test_point_scene_embeddings_one_row_per_point(tmp_path: Path) -> None:
    from maekit.backbones import SIZES, TransformerStack
    from maekit.domains.pointcloud import PointCloudAdapter
    from maekit.finetune.point_scene import cmd_embed_points, embed_point_scene, read_ply_table
    from maekit.weights.hub import PretrainedEncoder

    torch.manual_seed(0)
    xyz = _lidar_like_scene(np.random.default_rng(1))
    adapter = PointCloudAdapter(groups=16, group_size=16)
    spec = SIZES["nano"]
    adapter.build(spec.width)
    encoder = PretrainedEncoder(adapter, TransformerStack(spec.width, spec.depth, spec.heads), {}).eval()
    features, counts = embed_point_scene(encoder, xyz, chunk_size=12.0, overlap=3.0, points_per_chunk=256,
                                         batch_size=4)
    assert features.shape == (len(xyz), spec.width) and np.isfinite(features).all()
    assert counts.min() >= 1 and (counts > 1).any()
    # roof points and ground points get different embeddings (the encoder sees local shape)
    roof, ground = xyz[:, 2] > 5.5, xyz[:, 2] < 0.5
    between = np.linalg.norm(features[roof].mean(0) - features[ground].mean(0))
    assert between > 0.1 * np.linalg.norm(features[ground].std(0))

    # through the command, from an exported folder (model.safetensors + config.json)
    from safetensors.torch import save_file

    export = tmp_path / "encoder"
    export.mkdir()
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(export / "model.safetensors"))
    import json

    (export / "config.json").write_text(json.dumps({"adapter": adapter.config(), "size": "nano"}))
    np.save(tmp_path / "scene.npy", xyz)
    assert cmd_embed_points([str(export), str(tmp_path / "scene.npy"), str(tmp_path / "scene_embed.ply"),
                             "--chunk-size", "12", "--overlap", "3", "--points-per-chunk", "256",
                             "--components", "4", "--device", "cpu"]) == 0
    table = read_ply_table(tmp_path / "scene_embed.ply")
    assert set(table) == {"x", "y", "z", "f000", "f001", "f002", "f003", "chunks"}
    np.testing.assert_array_equal(np.stack([table["x"], table["y"], table["z"]], 1), xyz)  # same points, same order
    assert table["chunks"].min() >= 1
