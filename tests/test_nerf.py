"""NeRF radiance grids: density conventions, padding never scored, mesh -> grid, bad files, CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from maekit.cli import main
from maekit.datasets.nerf import NerfGridDataModule, density_to_alpha, read_nerf_grid
from maekit.datasets.nerf_samples import (SCENE_CLASSES, cmd_nerf_grid, make_nerf_dataset, mesh_to_grid,
                                          write_nerf_grid)
from maekit.domains.nerf import NerfAdapter
from maekit.errors import DataError
from maekit.pretrain.mae import MaskedAutoencoder
from maekit.pretrain.masking import BlockMasking

from .conftest import CPU_TRAINER, REPO, TINY_DECODER, TINY_MODEL


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_nerf_dataset(tmp_path_factory.mktemp("nerf"), scenes=9, resolution=16, seed=1)


def grid_file(path: Path, sigma: np.ndarray, rgb: float = 0.5) -> Path:
    rgbsigma = np.concatenate([np.full((*sigma.shape, 3), rgb, np.float32), sigma[..., None]], -1)
    return write_nerf_grid(path, rgbsigma)


@pytest.mark.parametrize("mode", ["instant_ngp", "relu", "alpha"])
def test_density_to_alpha_each_mode(mode: str, tmp_path: Path) -> None:
    sigma = {"instant_ngp": np.array([-10.0, 0.0, math.log(100.0), math.log(300.0), 1000.0]),
             "relu": np.array([-5.0, 0.0, 50.0, 100.0, 1e6]),
             "alpha": np.array([0.0, 0.25, 0.5, 0.9, 1.0])}[mode]
    expected = {"instant_ngp": [1 - math.exp(-math.exp(-10) / 100), 1 - math.exp(-0.01), 1 - math.exp(-1),
                                1 - math.exp(-3), 1.0],
                "relu": [0.0, 0.0, 1 - math.exp(-0.5), 1 - math.exp(-1), 1.0],
                "alpha": [0.0, 0.25, 0.5, 0.9, 1.0]}[mode]
    np.testing.assert_allclose(density_to_alpha(sigma, mode), expected, rtol=1e-5, atol=1e-7)  # type: ignore[arg-type]
    # through a file: the reader hands (4, W, L, H) with alpha in the fourth channel
    path = grid_file(tmp_path / "g.npz", sigma.reshape(5, 1, 1).astype(np.float32))
    item = read_nerf_grid(path, mode)  # type: ignore[arg-type]
    assert item["image"].shape == (4, 5, 1, 1) and item["resolution"] == (5, 1, 1)
    np.testing.assert_allclose(item["image"][3].flatten().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(item["image"][:3], torch.tensor(0.5))


def test_generated_scenes_are_seeded_non_cubic_and_labelled(scenes: Path, tmp_path: Path) -> None:
    again = make_nerf_dataset(tmp_path, scenes=9, resolution=16, seed=1)
    a, b = np.load(scenes / "scene_004.npz"), np.load(again / "scene_004.npz")
    assert np.array_equal(a["rgbsigma"], b["rgbsigma"]) and np.array_equal(a["semantic"], b["semantic"])
    shapes = {tuple(np.load(p)["resolution"]) for p in sorted(scenes.glob("*.npz"))}
    assert all(max(s) == 16 and s[2] < 16 for s in shapes) and len({s[1] for s in shapes}) > 1
    item = read_nerf_grid(scenes / "scene_000.npz", with_semantic=True, with_scene_class=True)
    occupied = item["image"][3] > 0.5
    assert torch.equal(occupied, item["semantic"] > 0)  # every labelled voxel is solid, and only those
    assert item["scene_class"] == 0 and (item["semantic"] == 3).any()  # a bedroom has a bed


def test_padding_is_absent_and_never_scored(scenes: Path) -> None:
    dm = NerfGridDataModule(str(scenes), grid_size=[16, 16, 12], batch_size=4, flips=False, val_fraction=0.2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    valid, image = batch["valid"], batch["image"]
    assert not valid.all() and not valid[..., 8:].any()  # H is 8 in every scene: padded up to 12
    assert image.masked_fill(valid[:, None], 0).abs().sum() == 0  # padding holds zeros
    adapter = NerfAdapter(patch_size=4)
    adapter.build(32)
    tokens = adapter.tokenize(batch)
    grid = tokens.present.reshape(4, 4, 4, 3)
    has_real = valid.reshape(4, 4, 4, 4, 4, 3, 4).permute(0, 1, 3, 5, 2, 4, 6).flatten(4).any(-1)
    assert torch.equal(grid, has_real) and not grid[..., 2].any()  # patches made only of padding are absent
    # a partly padded patch: x = 6, 7 of the first x-block of patches are padding
    b = {"image": torch.rand(2, 4, 8, 8, 8), "valid": torch.ones(2, 8, 8, 8, dtype=torch.bool)}
    b["valid"][:, 6:] = False
    tokens = adapter.tokenize(b)
    assert tokens.present.all()  # every patch has real voxels
    target = adapter.target(tokens)
    pred = torch.randn_like(target)
    loss = adapter.loss(pred, target, tokens)
    wild = adapter.untokenize(pred, tokens)
    wild[:, :, 6:] = float("nan")  # whatever is predicted on padding
    wild_loss = adapter.loss(adapter.tokenize({"image": wild}).values, target, tokens)
    assert torch.isfinite(wild_loss).all() and torch.allclose(wild_loss, loss)
    # scoring padding would change the loss: the same prediction scored as if every voxel were real
    unweighted = adapter.loss(pred, target, _without_voxel_weights(tokens))
    assert not torch.allclose(unweighted, loss)
    # through the whole MAE: garbage (NaN) in the padding of the input changes nothing
    mae = MaskedAutoencoder(NerfAdapter(), "nano", 32, 1, 2, BlockMasking(0.75, 2))
    clean = {"image": b["image"].clone(), "valid": b["valid"]}
    clean["image"][:, :, 6:] = 0
    dirty = {"image": b["image"].clone(), "valid": b["valid"]}
    dirty["image"][:, :, 6:] = float("nan")
    torch.manual_seed(0)
    out_clean = mae(clean)
    out_dirty = mae(dirty, visible=out_clean.visible)
    assert torch.isfinite(out_dirty.loss) and torch.allclose(out_dirty.loss, out_clean.loss)


def _without_voxel_weights(tokens: object) -> object:
    from dataclasses import replace

    return replace(tokens, voxel_valid=None)  # type: ignore[type-var]


def test_rgb_is_scored_only_where_occupied() -> None:
    adapter = NerfAdapter(patch_size=2, alpha_activation="none")
    image = torch.zeros(1, 4, 2, 2, 2)
    image[0, 3, 0, 0, 0] = 1.0  # one occupied voxel, colour 0
    tokens = adapter.tokenize({"image": image})
    target = adapter.target(tokens)
    pred = target.clone()
    rgb = pred.view(1, 1, 4, 8)[:, :, :3]
    rgb[..., 1:] = 5.0  # wrong colours in empty voxels: not scored
    assert float(adapter.loss(pred, target, tokens)) == 0.0
    rgb[..., 0] = 1.0  # wrong colour where occupied: scored (mean over RGB of the one occupied voxel)
    assert float(adapter.loss(pred, target, tokens)) == pytest.approx(1.0)


def test_mesh_to_grid_occupies_the_surface(tmp_path: Path) -> None:
    import open3d as o3d

    radius, centre = 1.0, np.array([0.5, -2.0, 3.0])
    sphere = o3d.geometry.TriangleMesh.create_sphere(radius=radius, resolution=40)
    sphere.translate(centre)
    sphere.paint_uniform_color([0.9, 0.2, 0.1])
    mesh_path = tmp_path / "scans" / "sphere.ply"
    mesh_path.parent.mkdir()
    o3d.io.write_triangle_mesh(str(mesh_path), sphere)
    res = 16
    grid = mesh_to_grid(mesh_path, tmp_path / "sphere.npz", resolution=res)
    item = read_nerf_grid(tmp_path / "sphere.npz", "instant_ngp")
    alpha, rgb = item["image"][3].numpy(), item["image"][:3].numpy()
    occupied = alpha > 0.5
    assert max(occupied.shape) == res and occupied.sum() > 100
    assert np.all((alpha > 0.999) | (alpha < 1e-3))  # solid or empty in the instant_ngp convention
    voxel = float(grid["voxel_size"])
    centres = grid["bbox_min"] + (np.argwhere(occupied) + 0.5) * voxel
    distance = np.abs(np.linalg.norm(centres - centre, axis=1) - radius)
    assert distance.max() <= voxel * math.sqrt(3) / 2 + 0.02  # every occupied voxel touches the surface
    points = np.asarray(sphere.sample_points_uniformly(5000).points)
    idx = np.minimum(((points - grid["bbox_min"]) / voxel).astype(int), np.array(occupied.shape) - 1)
    assert occupied[tuple(idx.T)].mean() > 0.995  # and covered (a voxel the surface barely clips may be missed)
    assert not occupied[res // 2, res // 2, res // 2]  # a shell, not a ball
    np.testing.assert_allclose(rgb[:, occupied].mean(1), [0.9, 0.2, 0.1], atol=0.02)
    assert np.all(rgb[:, ~occupied] == 0)
    # a point cloud works too, and the command line turns a folder of scans into grids
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    cloud.paint_uniform_color([0.1, 0.8, 0.3])
    o3d.io.write_point_cloud(str(tmp_path / "scans" / "cloud.ply"), cloud)
    assert cmd_nerf_grid([str(tmp_path / "scans"), str(tmp_path / "grids"), "--resolution", "8",
                          "--density", "relu", "--dilate", "1"]) == 0
    for name, colour in (("sphere", [0.9, 0.2, 0.1]), ("cloud", [0.1, 0.8, 0.3])):
        item = read_nerf_grid(tmp_path / "grids" / f"{name}.npz", "relu")
        solid = item["image"][3] > 0.5
        assert max(solid.shape) == 8 and solid.any() and not solid.all()
        assert torch.allclose(item["image"][:3][:, solid].mean(1), torch.tensor(colour), atol=0.03)


def test_bad_grids_raise_a_data_error_naming_the_file(tmp_path: Path, scenes: Path) -> None:
    np.savez(tmp_path / "nokey.npz", density=np.zeros((4, 4, 4), np.float32))
    with pytest.raises(DataError, match=r"nokey\.npz: has no 'rgbsigma' array"):
        read_nerf_grid(tmp_path / "nokey.npz")
    np.savez(tmp_path / "three.npz", rgbsigma=np.zeros((4, 4, 4, 3), np.float32), resolution=[4, 4, 4])
    with pytest.raises(DataError, match=r"three\.npz: rgbsigma has 3 channels; expected 4"):
        read_nerf_grid(tmp_path / "three.npz")
    sigma = np.zeros((4, 4, 4), np.float32)
    sigma[1, 2, 3] = np.nan
    grid_file(tmp_path / "nan.npz", sigma)
    with pytest.raises(DataError, match=r"nan\.npz: contains 1 NaN/inf values \(1 in the density channel"):
        read_nerf_grid(tmp_path / "nan.npz")
    np.savez(tmp_path / "res.npz", rgbsigma=np.zeros((4, 6, 2, 4), np.float32), resolution=[6, 4, 2])
    with pytest.raises(DataError, match=r"res\.npz: resolution entry \[6, 4, 2\] disagrees with the rgbsigma grid "
                                        r"\[4, 6, 2\]"):
        read_nerf_grid(tmp_path / "res.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(DataError, match=r"broken\.npz: cannot be read as a NeRF grid \.npz"):
        read_nerf_grid(tmp_path / "broken.npz")
    np.savez(tmp_path / "bytes.npz", rgbsigma=np.full((2, 2, 2, 4), 255, np.float32), resolution=[2, 2, 2])
    with pytest.raises(DataError, match=r"bytes\.npz: RGB spans \[255, 255\]"):
        read_nerf_grid(tmp_path / "bytes.npz")
    small = NerfGridDataModule(str(scenes), grid_size=[8, 8, 8], val_fraction=0)
    small.setup("fit")
    with pytest.raises(DataError, match=r"scene_000\.npz: grid \[16, \d+, 8\] is larger than grid_size"):
        small.datasets["train"][0]  # nothing is silently cropped
    # in a folder, the datamodule names the bad file too (while sizing the batches)
    folder = tmp_path / "folder"
    make_nerf_dataset(folder, scenes=2, resolution=8, seed=0)
    (folder / "scene_bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"scene_bad\.npz: cannot be read"):
        NerfGridDataModule(str(folder)).setup("fit")
    with pytest.raises(DataError, match="semantic"):
        _item(write_nerf_grid(tmp_path / "plain" / "x.npz", np.zeros((4, 4, 4, 4), np.float32)).parent, "segmentation")


def _item(root: Path, task: str) -> dict:
    dm = NerfGridDataModule(str(root), task=task, val_fraction=0)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm.datasets["train"][0]


def _metrics(path: Path, key: str) -> list[float]:
    with open(path) as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_cli_pretrain_then_segment_and_classify(scenes: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert main(["fit", "-c", str(REPO / "configs" / "nerf" / "pretrain.yaml"), "--data.root", str(scenes),
                 "--data.grid_size", "null", "--data.crop", "false", "--data.num_workers", "0",
                 "--model.figure_every_n_epochs", "2", "--trainer.max_epochs", "2", *TINY_MODEL, *TINY_DECODER,
                 *CPU_TRAINER, "--trainer.logger.init_args.save_dir", str(runs)]) == 0
    version = runs / "nerf_pretrain" / "version_0"
    losses = _metrics(version / "metrics.csv", "train/loss_epoch")
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    assert list((version / "reconstructions").glob("*.png"))
    ckpt = version / "checkpoints" / "last.ckpt"
    assert main(["fit", "-c", str(REPO / "configs" / "nerf" / "segment.yaml"), "--data.root", str(scenes),
                 "--data.grid_size", "[16,16,8]", "--model.roi_size", "[16,16,8]", "--data.num_workers", "0",
                 "--model.pretrained", str(ckpt), "--model.feature_size", "8", "--trainer.max_epochs", "1",
                 "--trainer.check_val_every_n_epoch", "1", *TINY_MODEL, *CPU_TRAINER,
                 "--trainer.logger.init_args.save_dir", str(runs)]) == 0
    dice = _metrics(runs / "nerf_segment" / "version_0" / "metrics.csv", "val/dice")
    assert dice and 0.0 <= dice[-1] <= 1.0
    assert main(["fit", "-c", str(REPO / "configs" / "nerf" / "classify.yaml"), "--data.root", str(scenes),
                 "--data.downsample", "2", "--data.num_workers", "0", "--model.pretrained", str(ckpt),
                 "--model.num_classes", str(len(SCENE_CLASSES)), "--trainer.max_epochs", "1", *TINY_MODEL,
                 *CPU_TRAINER, "--trainer.logger.init_args.save_dir", str(runs)]) == 0
    acc = _metrics(runs / "nerf_classify" / "version_0" / "metrics.csv", "val/acc")
    assert acc and 0.0 <= acc[-1] <= 1.0
