"""Readers for the layouts users have: each on generated files in that layout (and on the real
labelled sets beside the project when they are present; those tests skip cleanly otherwise)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from maekit.cli import main
from maekit.domains.volume import VolumeAdapter, VolumeDataModule
from maekit.domains.volume.readers import find_cases, resolve_layout
from maekit.domains.volume.samples import make_brats_dataset, make_pairs_dataset
from maekit.errors import ConfigError, DataError
from maekit.pretrain.masking import GroupDirichletMasking, RandomMasking
from maekit.tokens import Tokens

from .conftest import CPU_TRAINER, REPO, TINY_DECODER, TINY_MODEL

LABELLED = REPO.parent / "shared" / "realdata-labelled"


def _setup(dm: object) -> list[str]:
    """Run `dm.setup('fit')` and return the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")  # type: ignore[attr-defined]
    return [str(w.message) for w in caught]


def _metrics(path: Path, key: str) -> list[float]:
    with open(path) as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


# ------------------------------------------------------------------------------------ medical
@pytest.mark.parametrize("folders", [("images", "labels"), ("imagesTr", "labelsTr")])
def test_image_label_folders_pair_up_and_never_replace_images(folders: tuple[str, str], tmp_path: Path) -> None:
    seed = int(np.random.default_rng().integers(1000))
    root = make_pairs_dataset(tmp_path / "set", cases=5, folders=folders, unlabelled=1, orphan_labels=1, seed=seed)
    assert resolve_layout(root) == "pairs"
    dm = VolumeDataModule(str(root), kind="mri", roi_size=[16, 16, 16], val_fraction=0.2, flips=False)
    notes = _setup(dm)
    # the unpaired files are named once, in one note
    unpaired = [n for n in notes if "without a label map" in n]
    assert len(unpaired) == 1 and "hippocampus_004" in unpaired[0] and "hippocampus_005" in unpaired[0]
    assert dm.modalities == ["mri"]  # one modality, named after kind: nobody had to name it
    cases = {c.name: c for c in dm.datasets["train"].cases + dm.datasets["val"].cases}
    assert sorted(cases) == [f"hippocampus_{i:03d}" for i in range(5)]
    for case in cases.values():  # every case's image is the image file, never the label map
        path = case.images["mri"][0]
        assert path.parent.name == folders[0]
    # the image is the MRI (many grey values), not the 0/1/2 label map
    item = dm.datasets["train"].load(0)
    assert item["image"].unique().numel() > 10


def test_pairs_segmentation_leaves_out_unlabelled_images_with_a_note(tmp_path: Path) -> None:
    root = make_pairs_dataset(tmp_path / "set", cases=5, unlabelled=2, seed=1)
    dm = VolumeDataModule(str(root), kind="mri", roi_size=[16, 16, 16], labels=[0, 1, 2], val_fraction=0.34)
    notes = _setup(dm)
    assert any("left out of segmentation" in n and "hippocampus_003" in n for n in notes)
    names = sorted(c.name for split in dm.datasets.values() for c in split.cases)
    assert names == ["hippocampus_000", "hippocampus_001", "hippocampus_002"]
    item = dm.datasets["train"][0]
    assert set(item["mask"].unique().tolist()) <= {0, 1, 2}


def test_pairs_pretraining_batches_mix_labelled_and_unlabelled_cases(tmp_path: Path) -> None:
    root = make_pairs_dataset(tmp_path / "set", cases=4, unlabelled=1, seed=2)
    dm = VolumeDataModule(str(root), kind="mri", roi_size=[16, 16, 16], val_fraction=0.0, batch_size=4)
    _setup(dm)
    batch = next(iter(dm.train_dataloader()))  # would fail to collate if only some items had masks
    assert batch["image"].shape == (4, 1, 16, 16, 16)


@pytest.mark.parametrize("where", ["pairs", "folder", "brats"])
def test_two_files_never_collapse_into_one_case(where: str, tmp_path: Path) -> None:
    if where == "pairs":
        root = make_pairs_dataset(tmp_path / "set", cases=3, unlabelled=0, seed=0)
        first = root / "images" / "hippocampus_001.nii.gz"
        second = root / "images" / "more" / "hippocampus_001.nii"
    elif where == "folder":
        root = make_pairs_dataset(tmp_path / "set", cases=3, unlabelled=0, seed=0)
        shutil.rmtree(root / "labels")
        first = root / "images" / "hippocampus_001.nii.gz"
        second = root / "hippocampus_001.nii.gz"  # same case name one folder up
    else:
        root = make_brats_dataset(tmp_path / "set", cases=2, size=8, seed=0)
        first = next(root.rglob("*_t1.nii.gz"))
        second = first.with_name(first.name.replace(".nii.gz", ".nii"))
    second.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(first, second)
    with pytest.raises(DataError) as err:
        find_cases(root, "folder" if where == "folder" else "auto")
    assert first.name in str(err.value) and second.name in str(err.value)
    assert str(second.parent) in str(err.value) or str(first.parent) in str(err.value)


def test_plain_folder_with_image_and_label_subfolders_is_refused_not_merged(tmp_path: Path) -> None:
    root = make_pairs_dataset(tmp_path / "set", cases=2, unlabelled=0, seed=0)
    with pytest.raises(DataError, match="images/hippocampus_000.nii.gz.*labels/hippocampus_000.nii.gz|"
                                        "labels/hippocampus_000.nii.gz.*images/hippocampus_000.nii.gz"):
        find_cases(root, "folder")


def test_single_modality_layouts_refuse_several_modalities(tmp_path: Path) -> None:
    root = make_pairs_dataset(tmp_path / "set", cases=2, unlabelled=0, seed=0)
    with pytest.raises(DataError, match="single-modality"):
        VolumeDataModule(str(root), modalities=["t1", "t2"], roi_size=[16, 16, 16]).setup("fit")


def test_a_count_of_modalities_takes_its_names_from_the_datamodule(tmp_path: Path) -> None:
    root = make_pairs_dataset(tmp_path / "set", cases=2, unlabelled=0, seed=0)
    name = ["t1", "flair", "ct"][int(np.random.default_rng().integers(3))]
    dm = VolumeDataModule(str(root), modalities=[name], roi_size=[16, 16, 16])
    dm.setup("fit")
    adapter = VolumeAdapter(modalities=1, patch_size=8)
    assert adapter.names_pending
    adapter.connect_datamodule(dm)
    assert adapter.modalities == [name] and adapter.config()["init_args"]["modalities"] == [name]
    rebuilt = VolumeAdapter(**adapter.config()["init_args"])
    assert rebuilt.modalities == [name]
    with pytest.raises(ConfigError, match="built for 2 modalities but the data delivers 1"):
        VolumeAdapter(modalities=2, patch_size=8).connect_datamodule(dm)


def test_dirichlet_masking_on_one_group_is_plain_random_masking() -> None:
    rng = np.random.default_rng()
    batch, num, ratio = int(rng.integers(2, 6)), int(rng.integers(20, 80)), float(rng.uniform(0.5, 0.9))
    tokens = Tokens(values=torch.zeros(batch, num, 4), coords=torch.zeros(batch, num, 3),
                    group=torch.zeros(batch, num, dtype=torch.long), present=torch.ones(batch, num, dtype=torch.bool))
    dirichlet = GroupDirichletMasking(ratio, num_groups=4)(tokens)
    plain = RandomMasking(ratio)(tokens)
    assert (dirichlet.mask.sum(1) == plain.mask.sum(1)).all()  # the whole budget, as random masking


def test_single_modality_mri_configs_pretrain_then_segment(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    root = make_pairs_dataset(tmp_path / "set", cases=4, shape=(16, 20, 16), unlabelled=1, seed=5)
    common = ["--data.root", str(root), "--data.roi_size", "[16,16,16]", "--data.num_workers", "0",
              "--data.batch_size", "2", *TINY_MODEL, *CPU_TRAINER, "--trainer.max_epochs", "1",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    assert main(["fit", "-c", str(REPO / "configs" / "mri" / "pretrain_small.yaml"), *common, *TINY_DECODER,
                 "--model.figure_every_n_epochs", "1"]) == 0
    ckpt = tmp_path / "runs" / "mri_pretrain_small" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")["maekit"]["adapter"]
    assert saved["init_args"]["modalities"] == ["mri"]  # the name flowed from the data into the checkpoint
    assert main(["fit", "-c", str(REPO / "configs" / "mri" / "segment.yaml"), *common, "--model.roi_size", "[16,16,16]",
                 "--model.feature_size", "8", "--model.pretrained", str(ckpt),
                 "--trainer.check_val_every_n_epoch", "1"]) == 0
    # the pretrained patch projection is kept: the count-built adapter took the weights' modality name
    assert not [w for w in recwarn if "newly initialised" in str(w.message)]
    dice = _metrics(tmp_path / "runs" / "mri_segment" / "version_0" / "metrics.csv", "val/dice")
    assert dice and all(math.isfinite(v) for v in dice)


needs_hippocampus = pytest.mark.skipif(not (LABELLED / "hippocampus").is_dir(),
                                       reason=f"real labelled set not present at {LABELLED / 'hippocampus'}")


@needs_hippocampus
def test_real_hippocampus_pairs_images_with_labels() -> None:
    dm = VolumeDataModule(str(LABELLED / "hippocampus"), kind="mri", roi_size=[32, 48, 32], labels=[0, 1, 2],
                          val_fraction=0.2)
    notes = _setup(dm)
    assert sum("without a label map" in n for n in notes) == 1
    cases = [c for split in dm.datasets.values() for c in split.cases]
    assert len(cases) == 129 and all(c.images["mri"][0].parent.name == "images" for c in cases)
    item = dm.datasets["val"].load(0)
    assert item["image"].unique().numel() > 10 and set(item["label"].unique().tolist()) <= {0, 1, 2}


# ------------------------------------------------------------------------------ picture chips
def test_jpeg_and_png_chips_in_class_folders_read_as_stored(tmp_path: Path) -> None:
    from PIL import Image

    from maekit.domains.multispectral import ChipDataModule
    from maekit.domains.multispectral.samples import make_picture_dataset

    root = make_picture_dataset(tmp_path / "eurosat", per_class=4, size=24, seed=int(np.random.default_rng().integers(99)))
    rng = np.random.default_rng()
    known = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(known).save(root / "forest" / "forest_known.png")  # lossless: read back exactly
    dm = ChipDataModule(str(root), preset="rgb", task="classification", val_fraction=0.25, flips=False)
    dm.setup("fit")
    assert dm.classes == ["cropland", "forest", "orchard", "urban"]
    files = dm.datasets["train"].files + dm.datasets["val"].files
    assert len(files) == 17 and {f.suffix for f in files} == {".jpg", ".png"}
    for split in dm.datasets.values():
        for i, path in enumerate(split.files):
            item = split[i]
            assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 24, 24)
            if path.name == "forest_known.png":
                assert torch.equal(item["image"], torch.from_numpy(known).permute(2, 0, 1))
                assert int(item["label"]) == dm.classes.index("forest")


def test_grey_pictures_are_one_band(tmp_path: Path) -> None:
    from maekit.domains.multispectral import ChipDataModule
    from maekit.domains.multispectral.samples import make_picture_dataset

    root = make_picture_dataset(tmp_path / "grey", per_class=2, size=16, grey=True, formats=("png",))
    dm = ChipDataModule(str(root), preset=None, file_bands=["L"], task="classification", val_fraction=0.25)
    dm.setup("fit")
    assert dm.datasets["train"][0]["image"].shape == (1, 16, 16)
    rgb = ChipDataModule(str(root), preset="rgb", task="classification", val_fraction=0.25)
    rgb.setup("fit")
    with pytest.raises(DataError, match=r"has 1 bands but the configuration describes 3"):
        rgb.datasets["train"][0]


def test_no_chip_files_error_lists_exactly_the_extensions_read(tmp_path: Path) -> None:
    from maekit.domains.multispectral import ChipDataModule
    from maekit.domains.multispectral.datamodule import CHIP_SUFFIXES, list_chips

    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "chip.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError) as err:
        ChipDataModule(str(tmp_path / "empty"), preset="rgb").setup("fit")
    listed = str(err.value).split("no chip files (")[1].split(")")[0].split(", ")
    assert listed == list(CHIP_SUFFIXES)
    for suffix in (".jpg", ".jpeg", ".png"):
        assert suffix in listed
    for suffix in listed:  # every listed extension is found by the lister, in either case
        folder = tmp_path / f"one{suffix}"
        folder.mkdir()
        (folder / f"x{suffix.upper()}").write_bytes(b"")
        assert list_chips(folder) == [folder / f"x{suffix.upper()}"]


def test_crop_larger_than_the_chips_is_refused_at_setup_naming_a_chip(tmp_path: Path) -> None:
    from maekit.domains.multispectral import ChipDataModule
    from maekit.domains.multispectral.samples import make_picture_dataset

    rng = np.random.default_rng()
    small, large = int(rng.integers(12, 20)), int(rng.integers(24, 32))
    root = make_picture_dataset(tmp_path / "mixed", per_class=3, size=(large, small), seed=3)
    crop = int(rng.integers(small + 1, large + 1))
    with pytest.raises(DataError, match=rf"_\d+\.(jpg|png).* is {small}x{small}, smaller than crop_size {crop}"):
        ChipDataModule(str(root), preset="rgb", crop_size=crop).setup("fit")
    ok = ChipDataModule(str(root), preset="rgb", crop_size=small)
    ok.setup("fit")
    assert ok.crop_size == small


def test_crop_size_unset_is_the_chip_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from maekit.domains.multispectral import ChipDataModule
    from maekit.domains.multispectral.samples import make_picture_dataset

    side = int(np.random.default_rng().integers(10, 30))
    uniform = make_picture_dataset(tmp_path / "one", per_class=2, size=side)
    dm = ChipDataModule(str(uniform), preset="rgb")
    dm.setup("fit")
    assert dm.crop_size is None and dm.datasets["train"][0]["image"].shape == (3, side, side)
    assert f"are {side}x{side}, used whole" in capsys.readouterr().err
    mixed = make_picture_dataset(tmp_path / "two", per_class=2, size=(side + 8, side), seed=1)
    dm = ChipDataModule(str(mixed), preset="rgb")
    dm.setup("fit")
    assert dm.crop_size == side and all(dm.datasets["train"][i]["image"].shape == (3, side, side) for i in range(4))
    assert f"cropped to {side}x{side}" in capsys.readouterr().err


def test_rgb_configs_pretrain_then_probe(tmp_path: Path) -> None:
    from maekit.domains.multispectral.samples import make_picture_dataset

    root = make_picture_dataset(tmp_path / "chips", per_class=6, size=16, seed=2)
    runs = ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *CPU_TRAINER]
    data = ["--data.root", str(root), "--data.num_workers", "0", "--data.batch_size", "8"]
    assert main(["fit", "-c", str(REPO / "configs" / "rgb" / "pretrain_small.yaml"), *data, *runs, *TINY_MODEL,
                 *TINY_DECODER, "--trainer.max_epochs", "1", "--model.figure_every_n_epochs", "1"]) == 0
    ckpt = tmp_path / "runs" / "rgb_pretrain_small" / "version_0" / "checkpoints" / "last.ckpt"
    out = tmp_path / "probe.json"
    assert main(["probe", "-c", str(REPO / "configs" / "rgb" / "probe.yaml"), *data, *TINY_MODEL,
                 "--trainer.accelerator", "cpu", "--model.pretrained", str(ckpt), "--labels_per_class", "1,all",
                 "--seeds", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    chips = [p for p in Path(root).rglob("*") if p.is_file()]
    assert result["n_train"] + result["n_test"] == len(chips) and result["n_test"] > 0
    for budget in ("1", "all"):
        for model in ("pretrained", "random"):
            assert 0.0 <= result["labels_per_class"][budget][model]["linear"] <= 1.0


needs_eurosat = pytest.mark.skipif(not (LABELLED / "eurosat_rgb").is_dir(),
                                   reason=f"real labelled set not present at {LABELLED / 'eurosat_rgb'}")


@needs_eurosat
def test_real_eurosat_rgb_loads_for_classification_and_pretraining() -> None:
    from maekit.domains.multispectral import ChipDataModule

    root = str(LABELLED / "eurosat_rgb")
    splits = []
    for _ in range(2):
        dm = ChipDataModule(root, preset="rgb", task="classification", val_fraction=0.2, seed=7)
        dm.setup("fit")
        splits.append([str(p) for p in dm.datasets["val"].files])
    assert splits[0] == splits[1] and len(splits[0]) == 400  # seeded
    assert len(dm.classes) == 10 and not set(splits[0]) & {str(p) for p in dm.datasets["train"].files}
    item = dm.datasets["train"][0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.uint8
    assert dm.crop_size is None  # 64x64 chips, used whole
    pre = ChipDataModule(root, preset="rgb", task="pretrain", val_fraction=0.1)
    pre.setup("fit")
    assert len(pre.datasets["train"]) + len(pre.datasets["val"]) == 2000
    with pytest.raises(DataError, match=r"is 64x64, smaller than crop_size 96"):
        ChipDataModule(root, preset="rgb", crop_size=96).setup("fit")


# ---------------------------------------------------------------------------------- skeletons
def _msr(tmp_path: Path, **kw: object) -> Path:
    from maekit.domains.skeleton.samples import make_msr_dataset

    return make_msr_dataset(tmp_path / "msr", **{"subjects": (1, 2, 3, 4), "executions": 1, "frames": 16, **kw})


def test_msr_action3d_text_reads_with_kinect20_and_the_cross_subject_split(tmp_path: Path) -> None:
    from maekit.domains.skeleton import SkeletonDataModule
    from maekit.domains.skeleton.readers import read_msr_file

    rng = np.random.default_rng()
    frames = int(rng.integers(3, 9))
    xyz = rng.normal(size=(frames, 20, 3)).astype(np.float32)
    rows = np.concatenate([xyz, rng.uniform(0, 1, (frames, 20, 1))], -1).reshape(-1, 4)
    path = tmp_path / "a05_s07_e02_skeleton3D.txt"
    path.write_text("\n".join(" ".join(f"{v:.7f}" for v in r) for r in rows) + "\n")
    x = read_msr_file(path)
    assert x.shape == (3, frames, 20, 1)
    np.testing.assert_allclose(x[..., 0], xyz.transpose(2, 0, 1), atol=1e-6)  # joint-major lines, xyz kept

    root = _msr(tmp_path)
    dm = SkeletonDataModule(str(root), frames=12, persons=1)
    dm.setup("fit")
    assert dm.topology is not None and dm.topology.name == "kinect20" and dm.topology.num_joints == 20
    subject = {s.name: int(s.name.split("_s")[1][:2]) for split in dm.datasets.values() for s in split.samples}
    assert {subject[s.name] for s in dm.datasets["train"].samples} == {1, 3}
    assert {subject[s.name] for s in dm.datasets["val"].samples} == {2, 4}
    assert dm.classes == ["a01", "a02", "a03", "a04"]
    item = dm.datasets["val"][0]
    assert item["skeleton"].shape == (3, 12, 20, 1) and int(item["label"]) == 0


@pytest.mark.parametrize("bad", ["zeros", "count", "nan", "frames"])
def test_bad_msr_sequences_fail_at_setup_or_are_skipped_and_listed(bad: str, tmp_path: Path) -> None:
    from maekit.domains.skeleton import SkeletonDataModule

    root = _msr(tmp_path)
    good = (root / "a02_s03_e01_skeleton3D.txt").read_text().splitlines()
    broken = {"zeros": ["0 0 0 0"] * 40,
              "count": good[:5] + [" ".join(good[5].split()[:3])] + good[6:],
              "nan": good[:7] + ["nan 0.1 0.2 1"] + good[8:],
              "frames": good[:-3]}[bad]
    target = root / "a02_s03_e01_skeleton3D.txt"
    target.write_text("\n".join(broken) + "\n")
    expected = {"zeros": "every coordinate", "count": "line 6 has 3 values", "nan": "line 8: NaN",
                "frames": "not a whole number of frames"}[bad]
    with pytest.raises(DataError, match=rf"a02_s03_e01_skeleton3D.txt: .*{expected}.*skip_invalid"):
        SkeletonDataModule(str(root), frames=12, persons=1).setup("fit")  # at setup, not in an epoch
    dm = SkeletonDataModule(str(root), frames=12, persons=1, skip_invalid=True)
    notes = _setup(dm)
    assert [n for n, _ in dm.skipped] == ["a02_s03_e01"] and any("a02_s03_e01" in n for n in notes)
    assert "a02_s03_e01" not in [s.name for split in dm.datasets.values() for s in split.samples]
    assert all(dm.datasets["train"][i]["skeleton"].isfinite().all() for i in range(len(dm.datasets["train"])))


def test_the_topology_named_on_the_adapter_reaches_the_datamodule(tmp_path: Path) -> None:
    import lightning as L

    from maekit.domains.skeleton import SkeletonAdapter, SkeletonDataModule
    from maekit.domains.skeleton.spec import KINECT20
    from maekit.pretrain import MAEPretrainModule

    root = _msr(tmp_path)
    # a custom 20-joint mapping (joints renamed, two parts): the datamodule has to take it from the model
    custom = {"name": "mine", "joints": [f"j{i}" for i in range(20)], "centre": "j3",
              "parts": {"upper": [f"j{i}" for i in range(12)], "lower": [f"j{i}" for i in range(12, 20)]}}
    model = MAEPretrainModule(SkeletonAdapter(custom, persons=1), size="nano", decoder_width=32, decoder_depth=1,
                              decoder_heads=2, figure_every_n_epochs=0)
    dm = SkeletonDataModule(str(root), frames=12, persons=1, batch_size=2)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, dm)
    assert dm.topology is not None and dm.topology.name == "mine" and dm.topology.centre == "j3"
    mismatch = SkeletonDataModule(str(root), topology="ntu25", frames=12, persons=1)
    model = MAEPretrainModule(SkeletonAdapter(KINECT20.name, persons=1), size="nano", decoder_width=32,
                              decoder_depth=1, decoder_heads=2, figure_every_n_epochs=0)
    with pytest.raises(ConfigError, match="'ntu25' .* differs from the model adapter's 'kinect20'"):
        L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                  default_root_dir=str(tmp_path)).fit(model, mismatch)


def test_kinect20_config_pretrains_on_msr_files_with_a_bad_one_skipped(tmp_path: Path) -> None:
    root = _msr(tmp_path, frames=20)
    (root / "a03_s01_e01_skeleton3D.txt").write_text("0 0 0 0\n" * 60)  # as one real MSR sequence is
    assert main(["fit", "-c", str(REPO / "configs" / "skeleton" / "pretrain_kinect20.yaml"), "--data.root", str(root),
                 "--data.frames", "16", "--data.batch_size", "2", "--data.num_workers", "0", *TINY_MODEL,
                 *TINY_DECODER, *CPU_TRAINER, "--trainer.max_epochs", "1", "--model.figure_every_n_epochs", "0",
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]) == 0
    losses = _metrics(tmp_path / "runs" / "skeleton_pretrain_kinect20" / "version_0" / "metrics.csv", "train/loss_epoch")
    assert losses and all(math.isfinite(v) for v in losses)


# ------------------------------------------------------------------------------- point clouds
def test_small_objects_are_refused_by_default_and_repeated_when_asked(tmp_path: Path) -> None:
    from maekit.domains.pointcloud import PointCloudDataModule

    rng = np.random.default_rng()
    counts = {}
    for cls in ("tree", "pole"):
        for i in range(3):
            n = int(rng.integers(70, 130))  # DALES-like objects of ~100 points
            path = tmp_path / "dales" / "train" / cls / f"{cls}_{i}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, rng.normal(size=(n, 3)).astype(np.float32))
            counts[str(path)] = n
    num_points = int(rng.integers(150, 300))
    dm = PointCloudDataModule(str(tmp_path / "dales"), task="classification", num_points=num_points, min_points=32,
                              val_fraction=0.34, augment=[])
    dm.setup("fit")
    with pytest.raises(DataError, match=rf"_\d\.npy: has \d+ points, fewer than the {num_points} needed.*"
                                        "resample_small: repeat"):
        dm.datasets["train"][0]
    dm = PointCloudDataModule(str(tmp_path / "dales"), task="classification", num_points=num_points, min_points=32,
                              val_fraction=0.34, augment=[], resample_small="repeat")
    dm.setup("fit")
    for split in dm.datasets.values():
        for i in range(len(split)):
            item = split[i]
            assert item["points"].shape == (num_points, 3)
            assert len(torch.unique(item["points"], dim=0)) == counts[item["path"]]  # every point kept, some twice
    with pytest.raises(ConfigError, match="resample_small must be 'error' or 'repeat'"):
        PointCloudDataModule(str(tmp_path / "dales"), resample_small="pad")  # type: ignore[arg-type]
