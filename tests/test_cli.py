"""End-to-end runs through the real CLI entry on tiny generated data."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from maekit.cli import main

from .conftest import CPU_TRAINER, REPO, TINY_DECODER, TINY_MODEL

CONFIGS = REPO / "configs"


def run_dir(tmp_path: Path, name: str) -> list[str]:
    return ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.logger.init_args.name", name]


def epoch_losses(metrics: Path, key: str) -> list[float]:
    with open(metrics) as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


@pytest.fixture(scope="module")
def pretrained_ckpt(naip_chips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pretrain through `maekit fit -c configs/naip/pretrain.yaml` and return last.ckpt."""
    tmp = tmp_path_factory.mktemp("pretrain")
    code = main(["fit", "-c", str(CONFIGS / "naip" / "pretrain.yaml"), "--data.root", str(naip_chips),
                 "--data.crop_size", "32", "--data.batch_size", "8", "--data.num_workers", "0",
                 "--model.adapter.init_args.patch_size", "8", "--model.figure_every_n_epochs", "1",
                 "--model.warmup_epochs", "1", "--trainer.max_epochs", "3",
                 *TINY_MODEL, *TINY_DECODER, *CPU_TRAINER, *run_dir(tmp, "pre")])
    assert code == 0
    version = tmp / "runs" / "pre" / "version_0"
    losses = epoch_losses(version / "metrics.csv", "train/loss_epoch")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert (version / "config.yaml").exists()
    figures = sorted((version / "reconstructions").glob("*.png"))
    assert len(figures) == 3 and figures[0].stat().st_size > 1000
    return version / "checkpoints" / "last.ckpt"


def test_pretrain_writes_checkpoint_with_encoder(pretrained_ckpt: Path) -> None:
    state = torch.load(pretrained_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("mae.encoder.blocks.0.") for k in state)
    assert "mae.adapter.patch_embed.1.weight" in state  # the NIR group's projection


def test_classify_from_pretrained_then_test(naip_chips: Path, pretrained_ckpt: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    common = ["-c", str(CONFIGS / "naip" / "classify.yaml"), "--data.root", str(naip_chips),
              "--data.batch_size", "8", "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "8",
              *TINY_MODEL, *CPU_TRAINER, *run_dir(tmp_path, "cls")]
    assert main(["fit", *common, "--model.pretrained", str(pretrained_ckpt), "--trainer.max_epochs", "2"]) == 0
    ckpt = tmp_path / "runs" / "cls" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    # the fine-tuned encoder started from the pretrained one (weights moved, but are close)
    pre = torch.load(pretrained_ckpt, weights_only=True)["state_dict"]["mae.encoder.blocks.0.attn.qkv.weight"]
    fine = torch.load(ckpt, weights_only=True)["state_dict"]["encoder.blocks.0.attn.qkv.weight"]
    assert not torch.equal(pre, fine) and torch.allclose(pre, fine, atol=0.05)
    capsys.readouterr()
    assert main(["test", *common, "--ckpt_path", str(ckpt)]) == 0
    assert "test/acc" in capsys.readouterr().out


def test_linear_probe_keeps_encoder_frozen(naip_chips: Path, pretrained_ckpt: Path, tmp_path: Path) -> None:
    assert main(["fit", "-c", str(CONFIGS / "naip" / "linear_probe.yaml"), "--data.root", str(naip_chips),
                 "--data.batch_size", "8", "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "8",
                 "--model.pretrained", str(pretrained_ckpt), "--trainer.max_epochs", "1",
                 *TINY_MODEL, *CPU_TRAINER, *run_dir(tmp_path, "probe")]) == 0
    pre = torch.load(pretrained_ckpt, weights_only=True)["state_dict"]
    probe = torch.load(tmp_path / "runs" / "probe" / "version_0" / "checkpoints" / "last.ckpt",
                       weights_only=True)["state_dict"]
    for key in ("encoder.blocks.1.mlp.fc2.weight", "adapter.patch_embed.0.weight"):
        assert torch.equal(pre[f"mae.{key}"], probe[key])


def test_segmentation_end_to_end(naip_segmentation: Path, pretrained_ckpt: Path, tmp_path: Path) -> None:
    assert main(["fit", "-c", str(CONFIGS / "naip" / "segment.yaml"), "--data.root", str(naip_segmentation),
                 "--data.batch_size", "4", "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "8",
                 "--model.pretrained", str(pretrained_ckpt), "--trainer.max_epochs", "1",
                 *TINY_MODEL, *CPU_TRAINER, *run_dir(tmp_path, "seg")]) == 0
    metrics = tmp_path / "runs" / "seg" / "version_0" / "metrics.csv"
    miou = epoch_losses(metrics, "val/miou")
    assert miou and 0.0 <= miou[-1] <= 1.0


def make_fake_firerisk(root: Path) -> None:
    """torchgeo's FireRisk layout: root/FireRisk/{train,val}/<class>/*.png, RGB."""
    from PIL import Image

    from torchgeo.datasets import FireRisk

    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1)):
        for cls in FireRisk.classes:
            folder = root / "FireRisk" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_firerisk_rgb_fine_tune_of_a_4_band_model(pretrained_ckpt: Path, tmp_path: Path) -> None:
    make_fake_firerisk(tmp_path / "fr")
    assert main(["fit", "-c", str(CONFIGS / "naip" / "firerisk.yaml"), "--data.root", str(tmp_path / "fr"),
                 "--data.batch_size", "7", "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "8",
                 "--model.pretrained", str(pretrained_ckpt), "--trainer.max_epochs", "1",
                 *TINY_MODEL, *CPU_TRAINER, *run_dir(tmp_path, "fr")]) == 0
    state = torch.load(tmp_path / "runs" / "fr" / "version_0" / "checkpoints" / "last.ckpt",
                       weights_only=True)["state_dict"]
    pre = torch.load(pretrained_ckpt, weights_only=True)["state_dict"]
    # the NIR projection made no tokens, so it got no gradient and kept its pretrained weights
    assert torch.equal(state["adapter.patch_embed.1.weight"], pre["mae.adapter.patch_embed.1.weight"])
    assert not torch.equal(state["adapter.patch_embed.0.weight"], pre["mae.adapter.patch_embed.0.weight"])


def test_toa_block_masking_config_on_npz_chips(toa_chips: Path, tmp_path: Path) -> None:
    assert main(["fit", "-c", str(CONFIGS / "toa" / "pretrain.yaml"), "--data.root", str(toa_chips),
                 "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.max_epochs", "1",
                 "--model.figure_every_n_epochs", "1", *TINY_MODEL, *TINY_DECODER, *CPU_TRAINER,
                 *run_dir(tmp_path, "toa")]) == 0
    assert list((tmp_path / "runs" / "toa" / "version_0" / "reconstructions").glob("*.png"))


def test_wrong_band_count_fails_with_the_file_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import rasterio
    from rasterio.transform import from_origin

    (tmp_path / "data").mkdir()
    with rasterio.open(tmp_path / "data" / "rgb_only.tif", "w", driver="GTiff", height=32, width=32, count=3,
                       dtype="uint8", crs="EPSG:26914", transform=from_origin(0, 0, 1, 1)) as dst:
        dst.write(np.ones((3, 32, 32), np.uint8))
    code = main(["fit", "-c", str(CONFIGS / "naip" / "pretrain.yaml"), "--data.root", str(tmp_path / "data"),
                 "--data.crop_size", "32", "--data.num_workers", "0", "--data.val_fraction", "0",
                 "--trainer.max_epochs", "1", *TINY_MODEL, *CPU_TRAINER, *run_dir(tmp_path, "bad")])
    assert code == 2
    err = capsys.readouterr().err
    assert "rgb_only.tif: has 3 bands but the configuration describes 4" in err


def test_domains_stats_and_sample_data_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["domains"]) == 0
    out = capsys.readouterr().out
    assert "naip" in out and "sentinel2" in out and "naip/pretrain" in out
    assert main(["sample-data", str(tmp_path / "d"), "--per-class", "2", "--val-per-class", "1", "--size", "16"]) == 0
    capsys.readouterr()
    stats_file = tmp_path / "stats.yaml"
    assert main(["stats", "-c", str(CONFIGS / "naip" / "pretrain.yaml"), "--data.root", str(tmp_path / "d"),
                 "--data.crop_size", "16", "--out", str(stats_file)]) == 0
    text = capsys.readouterr().out
    assert text == stats_file.read_text()
    mean = [float(v) for v in text.split("mean: [")[1].split("]")[0].split(",")]
    assert len(mean) == 4 and all(0.2 < m < 0.8 for m in mean)  # reflectance-like units (x 1/255)


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "sample-data" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    assert "--data" in capsys.readouterr().out


def test_predict_writes_probabilities_csv_and_georeferenced_masks(
        naip_chips: Path, naip_segmentation: Path, pretrained_ckpt: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import rasterio

    monkeypatch.chdir(tmp_path)  # the configs' logger writes under ./runs; writers in the run's own folder
    cls = ["-c", str(CONFIGS / "naip" / "classify.yaml"), "--data.root", str(naip_chips), "--data.batch_size", "8",
           "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "8", *TINY_MODEL, *CPU_TRAINER]
    assert main(["predict", *cls, "--model.pretrained", str(pretrained_ckpt)]) == 0
    with open(tmp_path / "runs" / "naip_classify" / "version_0" / "predictions" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8  # the val split
    assert {r["predicted"] for r in rows} <= {"cropland", "forest", "orchard", "urban"}
    assert all(abs(sum(float(r[f"p_{c}"]) for c in ("cropland", "forest", "orchard", "urban")) - 1) < 1e-4
               for r in rows)
    seg = ["-c", str(CONFIGS / "naip" / "segment.yaml"), "--data.root", str(naip_segmentation), "--data.batch_size", "2",
           "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "8", *TINY_MODEL, *CPU_TRAINER]
    assert main(["predict", *seg]) == 0
    written = sorted((tmp_path / "runs" / "naip_segment" / "version_0" / "predictions").glob("*_pred.tif"))
    sources = sorted((naip_segmentation / "val" / "images").glob("*.tif"))
    assert [p.name for p in written] == [f"{s.stem}_pred.tif" for s in sources]
    with rasterio.open(written[0]) as out, rasterio.open(sources[0]) as src:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        assert out.read(1).max() < 4
    assert not list((tmp_path / "runs" / "naip_segment" / "version_0" / "predictions").glob("*.tmp*"))


@pytest.mark.parametrize("config,root_flag", [("pretrain_rasters.yaml", "--data.root"),
                                              ("pretrain_torchgeo.yaml", "--data.paths")])
def test_pretraining_on_whole_rasters(config: str, root_flag: str, tmp_path: Path) -> None:
    from maekit.datasets.samples import make_large_raster

    make_large_raster(tmp_path / "quads" / "m_3809701_ne_14_060_20190811.tif", size=256, tile=128)
    assert main(["fit", "-c", str(CONFIGS / "naip" / config), root_flag, str(tmp_path / "quads"),
                 "--data.size", "64", "--data.samples_per_epoch", "8", "--data.batch_size", "4",
                 "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "16",
                 "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "2",
                 *TINY_MODEL, *TINY_DECODER, *CPU_TRAINER, *run_dir(tmp_path, "raster")]) == 0
    losses = epoch_losses(tmp_path / "runs" / "raster" / "version_0" / "metrics.csv", "val/loss")
    assert losses and math.isfinite(losses[-1])
