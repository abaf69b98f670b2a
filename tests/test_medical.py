"""Medical volumes: public layouts, loading onto one grid, missing modalities, bad inputs, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from maekit.cli import main
from maekit.datasets import VolumeDataModule, find_cases, load_case
from maekit.datasets.medical import Case
from maekit.datasets.medical_samples import make_brats_dataset, make_ct_dataset
from maekit.domains import VolumeAdapter
from maekit.errors import DataError

from .conftest import CPU_TRAINER, REALDATA, REPO, TINY_DECODER, TINY_MODEL

MODALITIES = ["t1", "t1ce", "t2", "flair"]


@pytest.fixture(scope="module")
def brats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_brats_dataset(tmp_path_factory.mktemp("brats"), cases=6, size=24, missing_fraction=0.6, seed=4)


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None, with_header: bool = True) -> Path:
    if with_header:
        image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    else:  # no affine: sform and qform codes stay 0
        image = nib.Nifti1Image(data, None)
        assert image.header["sform_code"] == 0 and image.header["qform_code"] == 0
    nib.save(image, str(path))
    return path


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "decathlon"])
def test_layouts_are_found_and_named_alike(layout: str, tmp_path: Path) -> None:
    root = make_brats_dataset(tmp_path, cases=3, size=16, layout=layout, missing_fraction=0.0)
    cases = find_cases(root)
    assert len(cases) == 3
    assert all(sorted(c.images) == sorted(MODALITIES) and c.label is not None for c in cases)
    item = load_case(cases[0], MODALITIES, labels=[0, 1, 2, 3, 4])
    assert item["image"].shape == (4, 16, 16, 16) and item["modality_present"].all()
    brain = item["image"][0] != 0
    assert abs(float(item["image"][0][brain].mean())) < 1e-3  # non-zero z-score
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3, 4}


def test_nnunet_layout(tmp_path: Path) -> None:
    import json

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "ADC"},
                                                       "labels": {"background": 0, "lesion": 1},
                                                       "file_ending": ".nii.gz"}))
    for case in ("p_001", "p_002"):
        for ch in (0, 1):
            save(tmp_path / "imagesTr" / f"{case}_{ch:04d}.nii.gz", np.random.rand(8, 8, 8).astype(np.float32))
        save(tmp_path / "labelsTr" / f"{case}.nii.gz", np.zeros((8, 8, 8), np.uint8))
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["p_001", "p_002"] and sorted(cases[0].images) == ["adc", "t2"]


def test_missing_modalities_become_absent_tokens(brats: Path) -> None:
    dm = VolumeDataModule(str(brats), modalities=MODALITIES, roi_size=[16, 16, 16], batch_size=6, val_fraction=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    present = batch["modality_present"]
    assert present.shape == (6, 4) and not present.all() and present.any(1).all()
    for i in range(6):  # a missing modality is all zeros
        for m in range(4):
            if not present[i, m]:
                assert batch["image"][i, m].abs().sum() == 0
    tokens = VolumeAdapter(patch_size=8).tokenize(batch)
    per_modality = tokens.present.reshape(6, 4, -1).any(-1)
    assert torch.equal(per_modality, present)


def test_crops_smaller_than_the_roi_are_padded_and_marked(brats: Path) -> None:
    dm = VolumeDataModule(str(brats), roi_size=[32, 32, 16], batch_size=1, val_fraction=0)
    dm.setup("fit")
    item = dm.datasets["train"][0]
    assert item["image"].shape == (4, 32, 32, 16)
    assert not item["valid"].all() and item["valid"][8:16, 8:16].all()


def test_bad_volumes_name_the_file(tmp_path: Path) -> None:
    flat = save(tmp_path / "flat.nii.gz", np.zeros((8, 8), np.float32))
    with pytest.raises(DataError, match=r"flat\.nii\.gz: is a 2-D image"):
        load_case(Case("c", {"t1": (flat, None)}), ["t1"])
    four = save(tmp_path / "four.nii.gz", np.zeros((8, 8, 8, 2), np.float32))
    with pytest.raises(DataError, match=r"four\.nii\.gz: is 4-D .* split it into one file per volume"):
        load_case(Case("c", {"t1": (four, None)}), ["t1"])
    data = np.ones((8, 8, 8), np.float32)
    data[1, 2, 3] = np.nan
    nan = save(tmp_path / "nan.nii.gz", data)
    with pytest.raises(DataError, match=r"nan\.nii\.gz: contains 1 NaN/inf voxels"):
        load_case(Case("c", {"t1": (nan, None)}), ["t1"])
    with pytest.raises(DataError, match="has none of the modalities"):
        load_case(Case("c", {"t2": (flat, None)}), ["t1"])
    a = save(tmp_path / "a.nii.gz", np.ones((8, 8, 8), np.float32), with_header=False)
    b = save(tmp_path / "b.nii.gz", np.ones((6, 8, 8), np.float32), with_header=False)
    with pytest.raises(DataError, match=r"b\.nii\.gz: has shape \(6, 8, 8\) but a\.nii\.gz has \(8, 8, 8\)"):
        load_case(Case("c", {"t1": (a, None), "t2": (b, None)}), ["t1", "t2"], pixdim=None)
    label = save(tmp_path / "seg.nii.gz", np.full((8, 8, 8), 7, np.uint8))
    with pytest.raises(DataError, match=r"seg\.nii\.gz: holds label values \[7\] outside the declared set"):
        load_case(Case("c", {"t1": (a, None)}, label), ["t1"], labels=[0, 1, 2])
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=r"broken\.nii\.gz: cannot be read as NIfTI"):
        load_case(Case("c", {"t1": (broken, None)}), ["t1"])


def test_ct_hu_window_and_labels(tmp_path: Path) -> None:
    root = make_ct_dataset(tmp_path, cases=2, size=16)
    cases = find_cases(root, modalities=["ct"])
    assert [c.name for c in cases] == ["ct_000", "ct_001"] and cases[0].label is not None
    item = load_case(cases[0], ["ct"], kind="ct", pixdim=(1.5, 1.5, 1.5), labels=[0, 1, 2, 3])
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert float(item["image"].min()) == 0.0 and float(item["image"].max()) == 1.0  # air and bone clip
    assert set(item["label"].unique().tolist()) == {0, 1, 2, 3}


def test_brats_pretraining_cli(brats: Path, tmp_path: Path) -> None:
    assert main(["fit", "-c", str(REPO / "configs" / "brats" / "pretrain.yaml"), "--data.root", str(brats),
                 "--data.roi_size", "[16,16,16]", "--data.batch_size", "2", "--data.num_workers", "0",
                 "--model.adapter.init_args.patch_size", "8", "--model.figure_every_n_epochs", "1",
                 "--trainer.max_epochs", "2", *TINY_MODEL, *TINY_DECODER, *CPU_TRAINER,
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]) == 0
    version = tmp_path / "runs" / "brats_pretrain" / "version_0"
    import csv

    with open(version / "metrics.csv") as f:
        losses = [float(r["train/loss_epoch"]) for r in csv.DictReader(f) if r.get("train/loss_epoch")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert list((version / "reconstructions").glob("*.png"))


REAL_MED = REALDATA / "medical"
needs_real = pytest.mark.skipif(not REAL_MED.is_dir(), reason=f"real sample files not present at {REAL_MED}")


@needs_real
def test_real_prostate_t2_and_adc_on_different_grids() -> None:
    case = Case("ProstateX-0000", {"t2": (REAL_MED / "ProstateX-0000_t2_tse_tra_4.nii.gz", None),
                                   "adc": (REAL_MED / "ProstateX-0000_ep2d_diff_tra_7_ADC.nii.gz", None)})
    item = load_case(case, ["t2", "adc"], pixdim=None)
    assert item["image"].shape == (2, 384, 384, 19)  # ADC (84x128) resampled onto the T2 grid
    assert item["modality_present"].all() and torch.isfinite(item["image"]).all()
    assert float(item["image"][1].std()) > 0.1


@needs_real
def test_real_4d_file_is_refused_with_advice_and_ct_reads() -> None:
    with pytest.raises(DataError, match="example4d.nii.gz: is 4-D"):
        load_case(Case("fmri", {"t1": (REAL_MED / "example4d.nii.gz", None)}), ["t1"])
    item = load_case(Case("ct", {"ct": (REAL_MED / "example_ct.nii.gz", None)}), ["ct"], kind="ct", pixdim=(3, 3, 3))
    assert item["image"].shape == (1, 122, 101, 112)
    lps = load_case(Case("mr", {"t1": (REAL_MED / "mr_totalsegmentator_example_mr_sm.nii.gz", None)}), ["t1"])
    assert lps["image"].shape[0] == 1 and torch.isfinite(lps["image"]).all()


def test_segment_from_pretrained_on_modality_subsets(brats: Path, tmp_path: Path) -> None:
    """One pretrained checkpoint fine-tunes on all modalities, on {t1ce, flair} and on {t2}."""
    assert main(["fit", "-c", str(REPO / "configs" / "brats" / "pretrain.yaml"), "--data.root", str(brats),
                 "--data.roi_size", "[16,16,16]", "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "8",
                 "--model.figure_every_n_epochs", "0", "--trainer.max_epochs", "1", *TINY_MODEL, *TINY_DECODER,
                 *CPU_TRAINER, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]) == 0
    ckpt = tmp_path / "runs" / "brats_pretrain" / "version_0" / "checkpoints" / "last.ckpt"
    for subset in ("[t1,t1ce,t2,flair]", "[t1ce,flair]", "[t2]"):
        assert main(["fit", "-c", str(REPO / "configs" / "brats" / "segment.yaml"), "--data.root", str(brats),
                     "--data.modalities", subset, "--data.roi_size", "[16,16,16]", "--data.num_workers", "0",
                     "--model.roi_size", "[16,16,16]", "--model.adapter.init_args.patch_size", "8",
                     "--model.feature_size", "8", "--model.pretrained", str(ckpt), "--trainer.max_epochs", "1",
                     "--trainer.check_val_every_n_epoch", "1", *TINY_MODEL, *CPU_TRAINER,
                     "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                     "--trainer.logger.init_args.name", "seg"]) == 0
    import csv

    for version in range(3):
        with open(tmp_path / "runs" / "seg" / f"version_{version}" / "metrics.csv") as f:
            dice = [float(r["val/dice"]) for r in csv.DictReader(f) if r.get("val/dice")]
        assert dice and 0.0 <= dice[-1] <= 1.0


def test_reconstruct_missing_modality_writes_nifti_on_the_case_grid(brats: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pre = ["--data.root", str(brats), "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "8",
           *TINY_MODEL, *TINY_DECODER, *CPU_TRAINER]
    assert main(["fit", "-c", str(REPO / "configs" / "brats" / "pretrain.yaml"), *pre, "--data.roi_size", "[16,16,16]",
                 "--model.figure_every_n_epochs", "0", "--trainer.max_epochs", "1",
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]) == 0
    ckpt = tmp_path / "runs" / "brats_pretrain" / "version_0" / "checkpoints" / "last.ckpt"
    # predicting at 2 mm: the synthetic volumes must still come back on the 1 mm source grid
    assert main(["predict", "-c", str(REPO / "configs" / "brats" / "reconstruct.yaml"), *pre,
                 "--data.pixdim", "[2.0,2.0,2.0]", "--ckpt_path", str(ckpt)]) == 0
    out = tmp_path / "runs" / "brats_reconstruct" / "version_0" / "reconstructions"
    cases = find_cases(brats)
    for case in cases:  # flair is dropped everywhere, so every case gets a synthetic flair
        written = out / f"{case.name}_flair_synth.nii.gz"
        assert written.exists() and (out / f"{case.name}_reconstruction.png").exists()
    source = nib.load(str(cases[0].images["t1ce"][0] if "t1ce" in cases[0].images else next(iter(cases[0].images.values()))[0]))
    synth = nib.load(str(out / f"{cases[0].name}_flair_synth.nii.gz"))
    assert synth.shape == source.shape and np.allclose(synth.affine, source.affine)
    assert synth.header.get_zooms() == source.header.get_zooms()
    assert np.isfinite(synth.get_fdata()).all() and synth.get_fdata().std() > 0
    missing = [m for m in MODALITIES if m not in cases[0].images and m != "flair"]
    for m in missing:  # modalities the case never had are synthesised too
        assert (out / f"{cases[0].name}_{m}_synth.nii.gz").exists()
    assert not list(out.glob(".*"))  # no temporary files left


def test_case_level_classification_on_a_modality_subset(brats: Path, tmp_path: Path) -> None:
    dm = VolumeDataModule(str(brats), case_labels="grades.csv", roi_size=[16, 16, 16], val_fraction=0)
    dm.setup("fit")
    assert dm.classes == ["0", "1"] and dm.num_classes == 2
    assert dm.datasets["train"][0]["label"].dtype == torch.long
    assert main(["fit", "-c", str(REPO / "configs" / "brats" / "classify.yaml"), "--data.root", str(brats),
                 "--data.modalities", "[t1ce,flair]", "--data.roi_size", "[16,16,16]", "--data.num_workers", "0",
                 "--data.batch_size", "2", "--model.adapter.init_args.patch_size", "8", "--trainer.max_epochs", "1",
                 *TINY_MODEL, *CPU_TRAINER, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]) == 0
    (tmp_path / "bad.csv").write_text("case,grade\nBraTS2021_00000\n")
    with pytest.raises(DataError, match=r"bad\.csv: row\(s\) \[1\] do not have a case and a label"):
        VolumeDataModule(str(brats), case_labels=str(tmp_path / "bad.csv")).setup("fit")


def test_ct_pretrain_then_segment_with_sliding_window(tmp_path: Path) -> None:
    root = make_ct_dataset(tmp_path / "ct", cases=4, size=24, spacing=1.5)
    common = ["--data.root", str(root), "--data.roi_size", "[16,16,16]", "--data.num_workers", "0",
              "--data.crop_foreground", "true", "--model.adapter.init_args.patch_size", "8", *TINY_MODEL, *CPU_TRAINER,
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.max_epochs", "1"]
    assert main(["fit", "-c", str(REPO / "configs" / "ct" / "pretrain.yaml"), *common, *TINY_DECODER,
                 "--model.decoder_reads", "[1,2]", "--model.figure_every_n_epochs", "1"]) == 0
    ckpt = tmp_path / "runs" / "ct_pretrain" / "version_0" / "checkpoints" / "last.ckpt"
    assert list((ckpt.parent.parent / "reconstructions").glob("*.png"))
    assert main(["fit", "-c", str(REPO / "configs" / "ct" / "segment.yaml"), *common, "--model.roi_size", "[16,16,16]",
                 "--model.feature_size", "8", "--model.pretrained", str(ckpt),
                 "--trainer.check_val_every_n_epoch", "1"]) == 0
    import csv

    with open(tmp_path / "runs" / "ct_segment" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/dice")]
    assert rows and all(rows[-1].get(f"val/dice_{k}") for k in (1, 2, 3))


def test_dicom_series_in_a_ct_folder(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from maekit.datasets.medical_samples import write_dicom_series

    volume = np.full((6, 16, 20), -1000, np.int16)
    volume[:, 4:12, 5:15] = 40
    write_dicom_series(tmp_path / "ct" / "series_a", volume, spacing=(2.5, 0.8, 0.8))
    save(tmp_path / "ct" / "volume_b.nii.gz", np.zeros((8, 8, 8), np.int16))
    cases = find_cases(tmp_path / "ct", modalities=["ct"])
    assert [c.name for c in cases] == ["series_a", "volume_b"]
    item = load_case(cases[0], ["ct"], kind="ct", pixdim=None)
    assert item["image"].shape == (1, 20, 16, 6)
    assert float(item["image"].min()) == 0.0 and 0.49 < float(item["image"].max()) < 0.51  # 40 HU in the window
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.dcm").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad: cannot be read as a DICOM series"):
        load_case(Case("bad", {"ct": (tmp_path / "bad", None)}), ["ct"], kind="ct")
