"""Weights written by an older layout of the kit still load.

`tests/data/legacy/` holds a checkpoint and an exported folder written by the kit *before* the
per-domain packages (commit "legacy fixtures"): a nano NAIP MAE trained for one step on
`maekit sample-data` chips (optimizer state dropped and tensors stored in fp16 to keep them
small), plus the encoder's features on a fixed input computed with that old code. The class
paths they record (`maekit.domains.multispectral.MultispectralAdapter`,
`maekit.pretrain.MAEPretrainModule`) must keep resolving and give the same features.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from maekit.weights import from_pretrained

from .conftest import REPO

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


@pytest.mark.parametrize("source", ["naip_nano.ckpt", "naip_nano_export"])
def test_legacy_weights_give_the_recorded_features(source: str) -> None:
    reference = torch.load(LEGACY / "naip_nano_reference.pt", weights_only=True)
    model = from_pretrained(LEGACY / source).eval()
    with torch.no_grad():
        features, tokens = model({"image": reference["image"]})
    assert features.shape == reference["features"].shape
    torch.testing.assert_close(features.half(), reference["features"], atol=2e-3, rtol=2e-3)


def test_legacy_checkpoint_as_model_pretrained() -> None:
    from maekit.cli import MaekitCLI

    cli = MaekitCLI(args=["-c", str(REPO / "configs" / "naip" / "classify.yaml"), "--data.root", str(LEGACY),
                          "--model.pretrained", str(LEGACY / "naip_nano.ckpt"), "--model.size", "nano",
                          "--model.adapter.init_args.patch_size", "8", "--trainer.accelerator", "cpu"], run=False)
    state = torch.load(LEGACY / "naip_nano.ckpt", weights_only=True)["state_dict"]
    for key in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias"):
        torch.testing.assert_close(cli.model.encoder.state_dict()[key], state[f"mae.encoder.{key}"].float())
    torch.testing.assert_close(cli.model.adapter.state_dict()["patch_embed.1.weight"],
                               state["mae.adapter.patch_embed.1.weight"].float())


#: class paths that checkpoints and configs written by earlier versions record
OLD_CLASS_PATHS = [
    "maekit.domains.MultispectralAdapter", "maekit.domains.multispectral.MultispectralAdapter",
    "maekit.domains.VolumeAdapter", "maekit.domains.volume.VolumeAdapter",
    "maekit.domains.PointCloudAdapter", "maekit.domains.pointcloud.PointCloudAdapter",
    "maekit.domains.NerfAdapter", "maekit.domains.nerf.NerfAdapter",
    "maekit.domains.SkeletonAdapter", "maekit.domains.skeleton.SkeletonAdapter", "maekit.domains.Topology",
    "maekit.domains.PatchGridAdapter", "maekit.domains.patches.PatchGridAdapter",
    "maekit.datasets.ChipDataModule", "maekit.datasets.chips.ChipDataModule",
    "maekit.datasets.VolumeDataModule", "maekit.datasets.medical.VolumeDataModule",
    "maekit.datasets.PointCloudDataModule", "maekit.datasets.pointcloud.PointCloudDataModule",
    "maekit.datasets.NerfGridDataModule", "maekit.datasets.nerf.NerfGridDataModule",
    "maekit.datasets.SkeletonDataModule", "maekit.datasets.skeleton.SkeletonDataModule",
    "maekit.datasets.RasterDataModule", "maekit.datasets.windows.RasterDataModule",
    "maekit.datasets.GeoSamplerDataModule", "maekit.datasets.TorchGeoClassificationDataModule",
    "maekit.datasets.torchgeo_interop.GeoSamplerDataModule",
    "maekit.datasets.shards.StreamingShardsDataModule", "maekit.finetune.volume_writers.VolumeSegmentationWriter",
    "maekit.finetune.writers.PredictionWriter",
    "maekit.finetune.PointCloudClassificationTask", "maekit.finetune.VolumeSegmentationTask",
    "maekit.finetune.ClassificationTask", "maekit.finetune.SegmentationTask",
]


@pytest.mark.parametrize("path", OLD_CLASS_PATHS)
def test_old_class_paths_resolve(path: str) -> None:
    module, _, name = path.rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), name), type)
