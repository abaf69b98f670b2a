"""Streaming shards: shard -> stream round trips per domain, atomic writing, and CLI training from shards."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from maekit.cli import main
from maekit.datasets.chips import ChipDataModule
from maekit.datasets.shards import MANIFEST, StreamingShardsDataModule, cmd_shard, write_shards
from maekit.errors import ConfigError, DataError

from .conftest import CPU_TRAINER, REPO, TINY_DECODER, TINY_MODEL


def assert_same_sample(streamed: dict[str, Any], original: dict[str, Any], where: str) -> None:
    """Same keys; tensors equal in value, dtype and shape; everything else equal."""
    assert sorted(streamed) == sorted(original), where
    for key, value in original.items():
        got = streamed[key]
        if isinstance(value, torch.Tensor):
            assert isinstance(got, torch.Tensor) and got.dtype == value.dtype, f"{where} {key}"
            assert got.shape == value.shape and torch.equal(got, value), f"{where} {key}"
        else:
            assert type(got) is type(value) and got == value, f"{where} {key}: {got!r} != {value!r}"


def assert_round_trip(source: Any, shards: Path, deterministic: dict[str, Any]) -> None:
    """Every split streams (unshuffled, un-augmented) exactly the source's samples, in order; the
    source's random steps are switched off through `deterministic` attribute values."""
    stream = StreamingShardsDataModule(str(shards), shuffle=False, augment=False)
    stream.setup()
    manifest = json.loads((shards / MANIFEST).read_text())
    for split, dataset in source.datasets.items():
        for name, value in deterministic.items():
            if hasattr(dataset, name):
                setattr(dataset, name, value)
        streamed = list(stream.datasets[split])
        assert len(streamed) == len(dataset) == manifest["splits"][split]["samples"] > 0
        for index, item in enumerate(streamed):
            assert_same_sample(item, dataset[index], f"{split}[{index}]")


def module_set_up(datamodule: Any) -> Any:
    datamodule.setup()
    return datamodule


def assert_augmented_like_source(source: Any, shards: Path, keys: tuple[str, ...], repeats: int = 3) -> None:
    """With the same seed, the stream's training augmentation (applied to stored samples) draws
    exactly what the source's own augmentation draws: the random steps are the source's."""
    import random

    stream = StreamingShardsDataModule(str(shards), shuffle=False)
    stream.setup()
    dataset, changed = source.datasets["train"], 0
    for index in range(len(dataset)):
        for seed in range(repeats):
            random.seed(seed)
            original = dataset[index]
            random.seed(seed)
            streamed = stream.datasets["train"][index]
            for key in keys:
                assert torch.equal(streamed[key], original[key]), f"train[{index}] seed {seed} {key}"
            plain = stream.dataset("train")[index]
            changed += not torch.equal(streamed["image"], plain["image"])
    assert changed > 0  # the augmentation did something


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from maekit.datasets.samples import make_chip_dataset

    return make_chip_dataset(tmp_path_factory.mktemp("chips"), "naip", "classification", per_class=3,
                             val_per_class=1, size=32, nodata_fraction=0.3, seed=4)


def test_chips_round_trip_keeps_samples_paths_and_datamodule_attributes(chips: Path, tmp_path: Path) -> None:
    out = write_shards(ChipDataModule(str(chips), task="classification", crop_size=24), tmp_path / "shards")
    source = ChipDataModule(str(chips), task="classification", crop_size=24)
    source.setup()
    assert_round_trip(source, out, {"random_crop": False, "flips": False})
    stream = StreamingShardsDataModule(str(out))
    assert stream.bands == ["R", "G", "B", "NIR"] and stream.classes == source.classes and stream.num_classes == 4
    assert stream.batch_size == source.batch_size
    stored = json.loads((out / MANIFEST).read_text())["splits"]["train"]["sample"]
    assert stored["image"] == {"type": "tensor", "dtype": "uint8", "shape": [4, 32, 32]}  # whole chips, stored dtype


def test_chip_random_crops_and_flips_happen_at_stream_time_as_in_the_source(chips: Path, tmp_path: Path) -> None:
    out = write_shards(ChipDataModule(str(chips), task="classification", crop_size=24), tmp_path / "shards")
    source = ChipDataModule(str(chips), task="classification", crop_size=24)
    source.setup()
    assert_augmented_like_source(source, out, ("image", "valid"))


def test_point_cloud_round_trip_and_stream_time_augmentation(tmp_path: Path) -> None:
    from maekit.datasets.pointcloud import PointCloudDataModule
    from maekit.datasets.pointcloud_samples import make_pointcloud_dataset

    root = make_pointcloud_dataset(tmp_path / "pc", "modelnet40", classes=("box", "sphere"), per_class=3,
                                   test_per_class=1, points=256, seed=5)

    def module() -> PointCloudDataModule:
        return PointCloudDataModule(str(root), task="classification", num_points=128, channels=["nx", "ny", "nz"],
                                    augment=["scale_translate", "rotate"], batch_size=2, min_points=8)

    out = write_shards(module(), tmp_path / "shards")
    source = module()
    source.setup()
    assert_round_trip(source, out, {"augment": [], "subsample": "fps"})
    stream = StreamingShardsDataModule(str(out), shuffle=False)
    assert stream.channels == ["nx", "ny", "nz"] and stream.num_classes == 2
    stream.setup()
    augmented = next(iter(stream.datasets["train"]))["points"]
    plain = source.datasets["train"][0]["points"]
    assert augmented.shape == plain.shape and not torch.allclose(augmented, plain)
    normals = augmented[:, 3:6]  # rotated with the cloud, still unit length
    assert torch.allclose(normals.norm(dim=1), plain[:, 3:6].norm(dim=1), atol=1e-5)
    batch = next(iter(stream.train_dataloader()))
    assert batch["points"].shape == (2, 128, 6) and isinstance(batch["path"], list)


def test_point_shards_keep_a_pool_so_each_epoch_draws_a_new_subset(tmp_path: Path) -> None:
    from maekit.datasets.pointcloud import PointCloudDataModule, choose_points
    from maekit.datasets.pointcloud_samples import make_pointcloud_dataset

    root = make_pointcloud_dataset(tmp_path / "pc", "modelnet40", classes=("box", "torus"), per_class=2,
                                   test_per_class=1, points=512, seed=2)
    source = PointCloudDataModule(str(root), task="classification", num_points=64, batch_size=2, min_points=8,
                                  augment=[])
    out = write_shards(source, tmp_path / "shards")
    source.setup()
    stream = StreamingShardsDataModule(str(out), shuffle=False)
    stream.setup()
    draws = [stream.datasets["train"][0]["points"] for _ in range(2)]
    everything = {tuple(row) for row in source.datasets["train"].all_points(0)[0].tolist()}
    for draw in draws:
        assert draw.shape == (64, 3) and len({tuple(r) for r in draw.tolist()}) == 64
        assert {tuple(row) for row in draw.tolist()} <= everything  # points of the cloud, not made up
    assert {tuple(r) for r in draws[0].tolist()} != {tuple(r) for r in draws[1].tolist()}
    # Point-MAE's fps_random from the pool: a subset of the source's first round(64 * 1200 / 1024) FPS picks
    source.datasets["train"].subsample = "fps_random"
    pooled = write_shards(source, tmp_path / "fps_random")
    stream = StreamingShardsDataModule(str(pooled), shuffle=False)
    stream.setup()
    first_picks = {tuple(r) for r in choose_points(source.datasets["train"].all_points(0)[0], 75, "fps").tolist()}
    drawn = stream.datasets["train"][0]["points"]
    assert drawn.shape == (64, 3) and {tuple(r) for r in drawn.tolist()} <= first_picks


def test_volume_round_trip_crops_at_stream_time_and_keeps_whole_validation_cases(tmp_path: Path) -> None:
    from maekit.datasets.medical import VolumeDataModule
    from maekit.datasets.medical_samples import make_brats_dataset

    root = make_brats_dataset(tmp_path / "brats", cases=4, size=16, seed=6)

    def module() -> VolumeDataModule:
        return VolumeDataModule(str(root), roi_size=[12, 12, 20], val_fraction=0.25, val_whole_volumes=True,
                                pixdim=None, batch_size=2)

    out = write_shards(module(), tmp_path / "shards")
    source = module()
    source.setup()
    assert_round_trip(source, out, {"random_crop": False, "flips": False})
    stored = json.loads((out / MANIFEST).read_text())["splits"]["train"]["sample"]
    assert stored["image"]["shape"][1:] == [16, 16, 16]  # whole cases are stored; crops are cut at stream time
    stream = StreamingShardsDataModule(str(out))
    assert stream.modalities == ["t1", "t1ce", "t2", "flair"]
    stream.setup()
    item = next(iter(stream.datasets["train"]))
    assert item["image"].shape == (4, 12, 12, 20) and not item["valid"].all()  # padded along z, marked invalid
    assert_augmented_like_source(module_set_up(module()), out, ("image", "valid", "mask"))


def test_nerf_round_trip(tmp_path: Path) -> None:
    from maekit.datasets.nerf import NerfGridDataModule
    from maekit.datasets.nerf_samples import make_nerf_dataset

    root = make_nerf_dataset(tmp_path / "nerf", scenes=4, resolution=12, seed=7)
    out = write_shards(NerfGridDataModule(str(root), task="segmentation", val_fraction=0.25), tmp_path / "shards")
    source = NerfGridDataModule(str(root), task="segmentation", val_fraction=0.25)
    source.setup()
    assert_round_trip(source, out, {"flips": False})
    assert StreamingShardsDataModule(str(out)).channels == ["r", "g", "b", "alpha"]
    source = NerfGridDataModule(str(root), task="segmentation", val_fraction=0.25)
    assert_augmented_like_source(module_set_up(source), out, ("image", "valid", "mask"))  # flips inside the padding


def test_raster_windows_are_sharded_as_a_fixed_seeded_draw(chips: Path, tmp_path: Path) -> None:
    from maekit.datasets.windows import RasterDataModule

    raster = sorted((chips / "train").rglob("*.tif"))[0]

    def module() -> RasterDataModule:
        return RasterDataModule(str(raster), size=16, samples_per_epoch=6, val_samples=3)

    out = write_shards(module(), tmp_path / "shards", seed=2)
    finish = json.loads((out / MANIFEST).read_text())["splits"]["train"]["finish"]
    assert finish["window_seed"] == 3
    source = module()
    source.setup()
    source.datasets["train"].seed = finish["window_seed"]  # validation keeps its own fixed seed 0
    assert_round_trip(source, out, {})
    train = [item["image"] for item in StreamingShardsDataModule(str(out), shuffle=False).dataset("train")]
    val = [item["image"] for item in StreamingShardsDataModule(str(out), shuffle=False).dataset("val")]
    assert not any(torch.equal(t, v) for t in train for v in val)  # training windows are not the validation ones


def test_skeleton_round_trip_and_stream_time_crops(tmp_path: Path) -> None:
    skeleton = pytest.importorskip("maekit.datasets.skeleton")
    samples = pytest.importorskip("maekit.datasets.skeleton_samples")
    root = samples.make_skeleton_dataset(tmp_path / "skel", per_class=6, frames=32, seed=3) / "skeletons"

    def module() -> Any:
        return skeleton.SkeletonDataModule(str(root), frames=16, batch_size=4, rotation=10.0, shear=0.1)

    out = write_shards(module(), tmp_path / "shards")
    source = module()
    source.setup()
    assert_round_trip(source, out, {"train": False})
    stream = StreamingShardsDataModule(str(out), shuffle=False)
    assert stream.num_classes == source.num_classes == 4
    stream.setup()
    augmented = next(iter(stream.datasets["train"]))["skeleton"]
    assert augmented.shape == source.datasets["train"][0]["skeleton"].shape
    assert not torch.equal(augmented, source.datasets["train"][0]["skeleton"])


def test_a_failure_midway_leaves_no_output(chips: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"

    def fail_at_fifth(split: str, index: int) -> None:
        if index == 4:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_shards(ChipDataModule(str(chips), task="classification"), out, on_sample=fail_at_fifth)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary folder is left
    write_shards(ChipDataModule(str(chips), task="classification"), out)
    with pytest.raises(ConfigError, match="already exists"):
        write_shards(ChipDataModule(str(chips), task="classification"), out)
    with pytest.raises(RuntimeError):  # a failed overwrite keeps the old shards intact
        write_shards(ChipDataModule(str(chips), task="classification"), out, overwrite=True, on_sample=fail_at_fifth)
    assert StreamingShardsDataModule(str(out)).manifest["splits"]["train"]["samples"] == 12
    with pytest.raises(DataError, match="no shard manifest"):
        StreamingShardsDataModule(str(tmp_path))


def test_cli_shards_a_config_then_trains_from_the_shards(chips: Path, tmp_path: Path) -> None:
    config = REPO / "configs" / "naip" / "pretrain.yaml"
    out = tmp_path / "shards"
    assert cmd_shard(["-c", str(config), "--out", str(out), "--data.root", str(chips), "--data.crop_size", "16",
                      "--data.batch_size", "4"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["datamodule"] == "maekit.domains.multispectral.datamodule.ChipDataModule"
    assert manifest["splits"]["train"]["finish"]["crop_size"] == 16
    code = main(["fit", "-c", str(REPO / "configs" / "naip" / "pretrain_shards.yaml"),
                 "--data.root", str(out), "--data.batch_size", "4", "--data.num_workers", "0",
                 "--model.adapter.init_args.patch_size", "8", "--model.warmup_epochs", "1",
                 "--model.figure_every_n_epochs", "0", "--trainer.max_epochs", "2",
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                 "--trainer.logger.init_args.name", "shards", *TINY_MODEL, *TINY_DECODER, *CPU_TRAINER])
    assert code == 0
    with open(tmp_path / "runs" / "shards" / "version_0" / "metrics.csv") as f:
        losses = [float(r["train/loss_epoch"]) for r in csv.DictReader(f) if r.get("train/loss_epoch")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert (tmp_path / "runs" / "shards" / "version_0" / "checkpoints" / "last.ckpt").exists()
