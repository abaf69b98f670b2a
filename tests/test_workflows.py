"""Every workflow of README.md's "The CLI" section, run with the SHIPPED configs through the real
entry (`maekit.cli.main`), on data `maekit sample-data` generates.

Only sizes (model size, batch, crops / grids / frames, few-shot and CV counts), run lengths,
class counts of the sample data and data paths are overridden; never a patch size, band or
modality list. The pretraining checkpoint of each chain is the path `fit` prints, so these tests
also pin where outputs go: everything under `--trainer.default_root_dir`, nothing in the working
directory, one `last.ckpt` per run.

Not run here (they need data `sample-data` does not make): FireRisk (torchgeo download), whole
NAIP quads (`tests/test_cli.py` runs those), ScanObjectNN, `embed-points` on a LAS scene.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from maekit.cli import main

from .conftest import REPO

CONFIGS = REPO / "configs"
#: run length and loaders: one optimiser step, one validation batch, no workers
SHORT = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
         "--trainer.limit_predict_batches", "1", "--trainer.num_sanity_val_steps", "0",
         "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--data.num_workers", "0"]
NANO = ["--model.size", "nano"]


def cli(*args: str | Path) -> str:
    """Run `maekit ARGS` in-process; return what it printed (and fail on a non-zero exit)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    assert code == 0, f"maekit {' '.join(map(str, args))} exited {code}:\n{out.getvalue()[-3000:]}"
    return out.getvalue()


def fit(config: str, root: Path, *args: str | Path) -> Path:
    """`maekit fit -c configs/CONFIG` under `root`: the checkpoint path it prints, checked to be
    the run's one last.ckpt under `root`."""
    printed = cli("fit", "-c", CONFIGS / config, "--trainer.default_root_dir", root, *SHORT, *args)
    found = re.findall(r"maekit: checkpoint written: (\S+)", printed)
    assert len(found) == 1, printed[-2000:]
    path = Path(found[0])
    assert path.name == "last.ckpt" and path.is_file() and root.resolve() in path.parents
    assert [p.name for p in path.parent.glob("last*")] == ["last.ckpt"]
    return path


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Each test runs in an empty working directory that must stay empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr("sys.argv", ["maekit"])  # the CLI's own arguments come from `main`
    yield
    assert not list(cwd.iterdir()), f"outputs leaked into the working directory: {list(cwd.iterdir())}"


def sample(tmp: pytest.TempPathFactory, preset: str, *args: str) -> Path:
    out = tmp.mktemp(preset) / "data"
    cli("sample-data", out, "--preset", preset, *args)
    return out


# ------------------------------------------------------------------------------ multispectral
def test_naip_pretrain_probe_classify_test_predict_segment(tmp_path_factory: pytest.TempPathFactory,
                                                           tmp_path: Path) -> None:
    chips = sample(tmp_path_factory, "naip", "--per-class", "3", "--val-per-class", "1", "--size", "32")
    seg = sample(tmp_path_factory, "naip", "--task", "segmentation", "--per-class", "1", "--val-per-class", "1",
                 "--size", "32")
    runs = tmp_path / "runs"
    small = ["--data.batch_size", "4", *NANO]
    pre = fit("naip/pretrain.yaml", runs, "--data.root", chips, "--data.crop_size", "32", *small)
    fit("naip/linear_probe.yaml", runs, "--data.root", chips, "--model.pretrained", pre, *small)
    tuned = fit("naip/classify.yaml", runs, "--data.root", chips, "--model.pretrained", pre, *small)
    assert "test/acc" in cli("test", "-c", CONFIGS / "naip/classify.yaml", "--trainer.default_root_dir", runs,
                             "--data.root", chips, "--ckpt_path", tuned, *SHORT, *small)
    printed = cli("predict", "-c", CONFIGS / "naip/classify.yaml", "--trainer.default_root_dir", runs,
                  "--data.root", chips, "--ckpt_path", tuned, *SHORT, *small)
    (csv,) = runs.rglob("predictions.csv")  # in the predicting run's own folder
    assert f"predictions written under {csv.parent}" in printed
    seg_ckpt = fit("naip/segment.yaml", runs, "--data.root", seg, "--model.pretrained", pre, *small)
    cli("predict", "-c", CONFIGS / "naip/segment.yaml", "--trainer.default_root_dir", runs, "--data.root", seg,
        "--ckpt_path", seg_ckpt, *SHORT, *small)
    assert list(runs.rglob("naip_segment/*/predictions/*_pred.tif"))
    # one last.ckpt per run, every run under the root dir
    assert len(list(runs.rglob("last*.ckpt"))) == 4 and not list(runs.rglob("last-v*"))


def _sentinel2_chips(root: Path, count: int = 6, size: int = 32) -> Path:
    """13-band Sentinel-2 L1C-like chips (`maekit sample-data` has no Sentinel-2 preset yet)."""
    import rasterio
    from rasterio.transform import from_origin

    from maekit.datasets.bands import PRESETS

    bands = PRESETS["sentinel2"].bands
    rng = np.random.default_rng(0)
    for i in range(count):
        path = root / ("val" if i >= count - 2 else "train") / f"chip_{i}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.integers(500, 4000, size=(len(bands), size, size)).astype(np.uint16)
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=len(bands), dtype="uint16",
                           crs="EPSG:32633", transform=from_origin(400000 + i * 320, 5000000, 10, 10)) as f:
            f.write(data)
            f.descriptions = tuple(bands)
    return root


def test_sentinel2_and_toa_pretraining(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    s2 = _sentinel2_chips(tmp_path_factory.mktemp("s2"))
    fit("sentinel2/pretrain.yaml", tmp_path / "runs", "--data.root", s2, "--data.crop_size", "32",
        "--data.batch_size", "2", *NANO)
    toa = sample(tmp_path_factory, "toa", "--per-class", "1", "--val-per-class", "1", "--size", "16")
    fit("toa/pretrain.yaml", tmp_path / "runs", "--data.root", toa, "--data.batch_size", "2", *NANO)


# ----------------------------------------------------------------------------------- volumes
def test_brats_pretrain_segment_classify_reconstruct(tmp_path_factory: pytest.TempPathFactory,
                                                     tmp_path: Path) -> None:
    brats = sample(tmp_path_factory, "brats", "--per-class", "4", "--size", "32")
    runs = tmp_path / "runs"
    roi = ["--data.roi_size", "[16,16,16]", "--data.batch_size", "1", *NANO]
    pre = fit("brats/pretrain.yaml", runs, "--data.root", brats, *roi)
    fit("brats/segment.yaml", runs, "--data.root", brats, "--model.pretrained", pre, "--model.roi_size", "[16,16,16]",
        "--data.modalities", "[t1ce,flair]", *roi)
    fit("brats/classify.yaml", runs, "--data.root", brats, "--model.pretrained", pre, *roi)
    cli("predict", "-c", CONFIGS / "brats/reconstruct.yaml", "--trainer.default_root_dir", runs, "--data.root", brats,
        "--ckpt_path", pre, *SHORT, *roi)
    assert list(runs.rglob("brats_reconstruct/*/reconstructions/*_flair_synth.nii.gz"))


def test_ct_pretrain_then_segment_with_the_shipped_patch(tmp_path_factory: pytest.TempPathFactory,
                                                         tmp_path: Path) -> None:
    """Hi-End-MAE's 12^3 patch in both configs: the encoder loads and the UNETR decoder runs."""
    ct = sample(tmp_path_factory, "ct", "--per-class", "3", "--size", "32")
    runs = tmp_path / "runs"
    roi = ["--data.roi_size", "[24,24,24]", "--data.batch_size", "1", *NANO]
    # Hi-End-MAE decoding reads encoder blocks [3, 6, 9, 12] of a base encoder: the nano one has 2
    pre = fit("ct/pretrain.yaml", runs, "--data.root", ct, "--model.decoder_reads", "[1,2]", *roi)
    tuned = fit("ct/segment.yaml", runs, "--data.root", ct, "--model.pretrained", pre, "--model.roi_size",
                "[24,24,24]", "--model.feature_size", "4", *roi)
    pre_w = torch.load(pre, weights_only=True)["state_dict"]["mae.adapter.patch_embed.0.weight"]
    tuned_w = torch.load(tuned, weights_only=True)["state_dict"]["adapter.patch_embed.0.weight"]
    assert pre_w.shape == tuned_w.shape == (64, 12**3) and torch.allclose(pre_w, tuned_w, atol=0.05)


# ------------------------------------------------------------------------------ point clouds
def test_pointcloud_pretrain_classify_svm_fewshot(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    clouds = sample(tmp_path_factory, "modelnet40", "--per-class", "3", "--val-per-class", "2", "--size", "1280")
    runs = tmp_path / "runs"
    small = ["--data.batch_size", "4", *NANO]
    pre = fit("pointcloud/pretrain.yaml", runs, "--data.root", clouds, *small)
    classes = ["--model.num_classes", "6"]
    tuned = fit("pointcloud/classify.yaml", runs, "--data.root", clouds, "--model.pretrained", pre, *classes, *small)
    cli("test", "-c", CONFIGS / "pointcloud/classify.yaml", "--trainer.default_root_dir", runs, "--data.root", clouds,
        *classes, "--model.votes", "2", "--data.eval_points", "1200", "--model.vote_points", "1024",
        "--ckpt_path", tuned, *SHORT, *small)
    for config, extra in (("svm", ["--model.cv_folds", "2"]),
                          ("fewshot", ["--model.k_shot", "2", "--model.query", "1", "--model.folds", "1"])):
        printed = cli("fit", "-c", CONFIGS / f"pointcloud/{config}.yaml", "--trainer.default_root_dir", runs,
                      "--data.root", clouds, "--model.pretrained", pre, *extra, *SHORT, *small)
        assert "maekit: no checkpoint written" in printed


# --------------------------------------------------------------------------- NeRF, skeletons
def test_nerf_pretrain_segment_classify(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    grids = sample(tmp_path_factory, "nerf", "--per-class", "4", "--size", "16")
    runs = tmp_path / "runs"
    small = ["--data.batch_size", "2", *NANO]
    grid = ["--data.grid_size", "[16,16,16]"]
    pre = fit("nerf/pretrain.yaml", runs, "--data.root", grids, *grid, *small)
    fit("nerf/segment.yaml", runs, "--data.root", grids, "--model.pretrained", pre, *grid,
        "--model.roi_size", "[16,16,16]", "--model.feature_size", "4", *small)
    fit("nerf/classify.yaml", runs, "--data.root", grids, "--model.pretrained", pre, *small)


def test_skeleton_pretrain_probe_finetune_and_coco17(tmp_path_factory: pytest.TempPathFactory,
                                                     tmp_path: Path) -> None:
    data = sample(tmp_path_factory, "skeleton", "--per-class", "4")
    runs = tmp_path / "runs"
    small = ["--data.batch_size", "4", "--data.frames", "16", *NANO]
    skeletons = data / "skeletons"
    pre = fit("skeleton/pretrain.yaml", runs, "--data.root", skeletons, *small)
    classes = ["--model.num_classes", "4"]  # the sample's 4 NTU actions
    fit("skeleton/linear_probe.yaml", runs, "--data.root", skeletons, "--model.pretrained", pre, *classes, *small)
    fit("skeleton/finetune.yaml", runs, "--data.root", skeletons, "--model.pretrained", pre, *classes, *small)
    fit("skeleton/pretrain_coco17.yaml", runs, "--data.root", data / "coco17_synthetic.npz", *small)



# ------------------------------------------------------------------------------ every shipped config
#: configs that read something other than `--data.root`
DATA_ARGS = {"naip/pretrain_torchgeo.yaml": "--data.paths"}
#: configs whose data option is more than a folder: (option, value with {tmp} for the folder)
DATA_VALUES = {f"multisensor/{name}.yaml": ("--data.sources", "[{{root: {tmp}, sensor: naip}}]")
               for name in ("pretrain_mixed", "probe")}
SMALL = {"rgb", "mri"}  # tiny already: built at their shipped size
#: what nano needs besides its size
AT_NANO = {"ct/pretrain.yaml": ["--model.decoder_reads", "[1,2]"]}


@pytest.mark.parametrize("config", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml")))
def test_every_shipped_config_builds_its_model_and_datamodule(config: str, tmp_path: Path) -> None:
    """Each shipped config parses and instantiates (large encoders at nano size, for time; the
    small-data configs as shipped)."""
    from maekit.cli import MaekitCLI

    if config == "naip/pretrain_shards.yaml":
        pytest.skip("reads a shard manifest at construction: built in tests/test_shards.py")
    small = "small" in config or "kinect20" in config or config.split("/")[0] in SMALL
    option, value = DATA_VALUES.get(config, (DATA_ARGS.get(config, "--data.root"), "{tmp}"))
    args = ["-c", str(CONFIGS / config), option, value.format(tmp=tmp_path)]
    built = MaekitCLI(args=args if small else [*args, *NANO, *AT_NANO.get(config, [])], run=False)
    assert built.model is not None and built.datamodule is not None
    if "pretrain_small" in config:  # small means small: ~1 M parameters (decoder included)
        assert sum(p.numel() for p in built.model.parameters()) < 5_000_000


def _pretrain_small_data(domain: str, tmp: pytest.TempPathFactory) -> Path:
    """Generated data in the layout each domain's pretrain_small config reads."""
    if domain == "rgb":
        from maekit.domains.multispectral.samples import make_picture_dataset
        return make_picture_dataset(tmp.mktemp("rgb") / "chips", per_class=2, size=16, seed=2)
    if domain == "mri":
        from maekit.domains.volume.samples import make_pairs_dataset
        return make_pairs_dataset(tmp.mktemp("mri") / "set", cases=4, shape=(16, 20, 16), unlabelled=1, seed=5)
    if domain in ("sentinel2", "multisensor"):
        return _sentinel2_chips(tmp.mktemp("s2") / "chips", count=4, size=16)
    if domain == "skeleton":
        return sample(tmp, "skeleton", "--per-class", "2") / "skeletons"
    preset, extra = {"naip": ("naip", ["--size", "64"]), "toa": ("toa", ["--size", "16"]),
                     "brats": ("brats", ["--size", "16"]), "ct": ("ct", ["--size", "16"]),
                     "pointcloud": ("modelnet40", ["--size", "1100"]), "nerf": ("nerf", ["--size", "16"])}[domain]
    return sample(tmp, preset, "--per-class", "2", *(["--val-per-class", "1"] if preset in {"naip", "toa", "modelnet40"}
                                                     else []), *extra)


@pytest.mark.parametrize("domain", sorted(p.parent.name for p in CONFIGS.glob("*/pretrain_small.yaml")))
def test_every_pretrain_small_config_fits_one_step(domain: str, tmp_path_factory: pytest.TempPathFactory,
                                                   tmp_path: Path) -> None:
    """One optimiser step of each shipped small-data recipe, as shipped (patch sizes, bands,
    masking, model and decoder size), on generated data; only run length, batch and paths set."""
    root = _pretrain_small_data(domain, tmp_path_factory)
    fit(f"{domain}/pretrain_small.yaml", tmp_path / "runs", "--data.root", root, "--data.batch_size", "2")


@pytest.mark.parametrize("config", ["multispectral/pretrain_temporal_small.yaml",
                                    "multisensor/pretrain_temporal_small.yaml"])
def test_temporal_small_configs_fit_one_step_on_sample_time_series(
        config: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The time-series recipes (band groups; any sensor + any dates) as shipped, one optimiser step
    on `maekit sample-data --preset timeseries`; the any-sensor one's checkpoint exports and reloads."""
    root = sample(tmp_path_factory, "timeseries", "--per-class", "2", "--val-per-class", "1")
    ckpt = fit(config, tmp_path / "runs", "--data.root", root, "--data.batch_size", "2")
    if config.startswith("multisensor"):
        from maekit.domains.multispectral import TemporalWavelengthAdapter
        from maekit.weights import from_pretrained

        cli("export", ckpt, tmp_path / "exported")
        encoder = from_pretrained(tmp_path / "exported")
        assert isinstance(encoder.adapter, TemporalWavelengthAdapter)
        with torch.no_grad():
            feats, tokens = encoder({"image": torch.rand(1, 2, 3, 16, 16), "wavelengths": [665.0, 560.0, 490.0],
                                     "dates": torch.tensor([[[2024, 100], [2024, 220]]])})
        assert feats.shape[:2] == (1, 2 * 4) and torch.isfinite(feats).all()
