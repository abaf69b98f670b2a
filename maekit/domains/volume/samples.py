"""Seeded phantoms in the public medical layouts: brain-like multimodal MRI with a tumour (BraTS
2021/2023 and Decathlon layouts, some cases missing modalities) and abdomen-like CT in HU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from maekit.domains.registry import Example, SampleOptions
from maekit.lazy import lazy_import
from maekit.progress import progress

# tissue intensities per modality (arbitrary MR units): background, WM, GM, CSF, edema, enhancing, necrosis
_CONTRAST = {
    "t1": (0, 700, 500, 200, 450, 560, 250),
    "t1ce": (0, 700, 520, 200, 470, 1150, 250),
    "t2": (0, 300, 500, 1200, 900, 600, 1000),
    "flair": (0, 400, 550, 100, 1000, 700, 300),
}
_BRATS2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
_DECATHLON_ORDER = ("flair", "t1", "t1ce", "t2")  # Task01_BrainTumour: FLAIR, T1w, T1gd, T2w


def _save(path: Path, data: np.ndarray, spacing: float, dtype: str) -> None:
    lazy_import("nibabel", "volumes")
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    image = nib.Nifti1Image(data.astype(dtype), affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    nib.save(image, str(path))


def brain_phantom(size: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """Four modalities (size^3, float32), a tissue map (0..6) and the tumour grade (0 low, 1 high)."""
    c = (size - 1) / 2
    z, y, x = np.mgrid[0:size, 0:size, 0:size].astype(np.float32)
    radii = np.array([0.42, 0.36, 0.40]) * size * rng.uniform(0.9, 1.05, 3)
    r = np.sqrt(((x - c) / radii[0]) ** 2 + ((y - c) / radii[1]) ** 2 + ((z - c) / radii[2]) ** 2)
    tissue = np.zeros((size,) * 3, np.int64)
    tissue[r < 1.0] = 2  # GM
    tissue[r < 0.8] = 1  # WM
    for side in (-1, 1):  # ventricles
        v = np.sqrt(((x - c - side * 0.12 * size) / (0.06 * size)) ** 2 + ((y - c) / (0.15 * size)) ** 2
                    + ((z - c) / (0.1 * size)) ** 2)
        tissue[v < 1.0] = 3
    grade = int(rng.integers(0, 2))
    centre = c + rng.uniform(-0.18, 0.18, 3) * size
    radius = rng.uniform(0.10, 0.16) * size
    d = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    tissue[(d < radius * 1.6) & (r < 0.95)] = 4  # edema
    if grade:  # high grade: enhancing rim around necrosis
        tissue[d < radius] = 5
        tissue[d < radius * 0.6] = 6
    else:
        tissue[d < radius * 0.8] = 6
    bias = 1 + 0.1 * np.sin(x / size * np.pi + rng.uniform(0, 3)) * np.cos(y / size * np.pi)
    images = {}
    for mod, levels in _CONTRAST.items():
        vol = np.asarray(levels, np.float32)[tissue] * bias
        vol = vol + rng.normal(0, 20, vol.shape) * (tissue > 0)
        images[mod] = np.clip(vol, 0, None).astype(np.float32)
    return images, tissue, grade


def tumour_labels(tissue: np.ndarray, naming: Literal["2021", "2023"]) -> np.ndarray:
    """BraTS labels: 1 necrosis, 2 edema, 4 (2021) or 3 (2023) enhancing tumour."""
    label = np.zeros(tissue.shape, np.uint8)
    label[tissue == 6] = 1
    label[tissue == 4] = 2
    label[tissue == 5] = 4 if naming == "2021" else 3
    return label


def make_brats_dataset(root: str | Path, cases: int = 8, size: int = 32,
                       layout: Literal["brats2021", "brats2023", "decathlon"] = "brats2021",
                       missing_fraction: float = 0.3, seed: int = 0) -> Path:
    """Write `cases` brain phantoms in `layout`; in the BraTS layouts a `missing_fraction` of
    cases lack one or two modalities (never all). Also writes `grades.csv` (case, grade)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = ["case,grade"]
    training = []
    for i in progress(range(cases), desc="cases", unit="case"):
        images, tissue, grade = brain_phantom(size, rng)
        name = f"BraTS-PHANTOM-{i:05d}" if layout == "brats2023" else f"BraTS2021_{i:05d}"
        rows.append(f"{name},{grade}")
        if layout == "decathlon":
            name = f"BRATS_{i:03d}"
            stack = np.stack([images[m] for m in _DECATHLON_ORDER], -1)
            _save(root / "imagesTr" / f"{name}.nii.gz", stack, 1.0, "float32")
            _save(root / "labelsTr" / f"{name}.nii.gz", tumour_labels(tissue, "2023"), 1.0, "uint8")
            training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
            continue
        keep = list(_CONTRAST)
        if rng.random() < missing_fraction:
            for drop in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
                keep.remove(list(_CONTRAST)[drop])
        naming = "2023" if layout == "brats2023" else "2021"
        sep = "-" if naming == "2023" else "_"
        for mod in keep:
            suffix = _BRATS2023[mod] if naming == "2023" else mod
            _save(root / name / f"{name}{sep}{suffix}.nii.gz", images[mod], 1.0, "float32")
        _save(root / name / f"{name}{sep}seg.nii.gz", tumour_labels(tissue, naming), 1.0, "uint8")
    if layout == "decathlon":
        meta = {"name": "BRATS phantoms", "modality": {str(i): n for i, n in enumerate(["FLAIR", "T1w", "t1gd", "T2w"])},
                "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
                "numTraining": cases, "training": training, "test": []}
        (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    (root / "grades.csv").write_text("\n".join(rows) + "\n")
    return root


def make_ct_dataset(root: str | Path, cases: int = 6, size: int = 32, spacing: float = 1.5, seed: int = 0) -> Path:
    """Abdomen-like CT phantoms in HU (int16) with organ labels (1 liver, 2 kidneys, 3 spine),
    written as `<case>.nii.gz` + `<case>_seg.nii.gz` in one folder."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    z, y, x = np.mgrid[0:size, 0:size, 0:size].astype(np.float32)
    for i in progress(range(cases), desc="cases", unit="case"):
        hu = np.full((size,) * 3, -1000.0)
        label = np.zeros((size,) * 3, np.uint8)
        body = ((x - c) / (0.45 * size)) ** 2 + ((y - c) / (0.32 * size)) ** 2 < 1
        hu[body] = -100  # fat
        inner = ((x - c) / (0.38 * size)) ** 2 + ((y - c) / (0.26 * size)) ** 2 < 1
        hu[inner] = 40  # soft tissue
        shift = rng.uniform(-0.05, 0.05, 2) * size
        liver = (((x - c + 0.15 * size + shift[0]) / (0.16 * size)) ** 2 + ((y - c - 0.05 * size) / (0.12 * size)) ** 2
                 + ((z - c) / (0.3 * size)) ** 2) < 1
        hu[liver], label[liver] = 60, 1
        for side in (-1, 1):
            kidney = (((x - c - side * 0.2 * size) / (0.06 * size)) ** 2 + ((y - c + 0.1 * size + shift[1]) / (0.05 * size)) ** 2
                      + ((z - c) / (0.1 * size)) ** 2) < 1
            hu[kidney], label[kidney] = 30, 2
        spine = ((x - c) ** 2 + (y - c + 0.2 * size) ** 2) < (0.05 * size) ** 2
        hu[spine], label[spine] = 700, 3
        hu = hu + rng.normal(0, 10, hu.shape)
        _save(root / f"ct_{i:03d}.nii.gz", np.round(hu), spacing, "int16")
        _save(root / f"ct_{i:03d}_seg.nii.gz", label, spacing, "uint8")
    return root


def make_pairs_dataset(root: str | Path, cases: int = 6, shape: tuple[int, int, int] = (20, 28, 20),
                       folders: tuple[str, str] = ("images", "labels"), unlabelled: int = 1,
                       orphan_labels: int = 0, seed: int = 0) -> Path:
    """Single-modality T1-like MRI crops with structure labels (0 background, 1 and 2 two halves
    of an elongated structure) as same-named files in an image and a label folder, without a
    `dataset.json`, as an MSD task is often redistributed (hippocampus). The last `unlabelled`
    images get no label map, `orphan_labels` label maps have no image, and voxel types vary
    (uint8 and float32 images), as in the wild."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]].astype(np.float32)
    centre = (np.array(shape) - 1) / 2
    for i in range(cases + orphan_labels):
        shift = rng.uniform(-0.1, 0.1, 3) * np.array(shape)
        d = np.sqrt(((z - centre[0] - shift[0]) / (0.18 * shape[0])) ** 2
                    + ((y - centre[1] - shift[1]) / (0.35 * shape[1])) ** 2
                    + ((x - centre[2] - shift[2]) / (0.15 * shape[2])) ** 2)
        label = np.zeros(shape, np.uint8)
        label[d < 1] = np.where(y[d < 1] < centre[1] + shift[1], 1, 2)
        brain = 60 + 40 * np.exp(-(((z - centre[0]) / shape[0]) ** 2 + ((x - centre[2]) / shape[2]) ** 2) * 4)
        image = brain + 70 * (label > 0) + rng.normal(0, 6, shape)
        name = f"hippocampus_{i:03d}.nii.gz"
        if i < cases:
            _save(root / folders[0] / name, np.clip(image, 0, 255), 1.0, "uint8" if i % 2 else "float32")
        if i < cases - unlabelled or i >= cases:
            _save(root / folders[1] / name, label, 1.0, "uint8")
    return root


def write_dicom_series(folder: str | Path, volume: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                       modality: str = "CT") -> Path:
    """Write `volume` (slices, rows, cols) int16 as a DICOM series, one file per slice."""
    lazy_import("pydicom", "volumes")
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    data = volume.astype(np.int16)
    for k, plane in enumerate(data):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = modality, "PHANTOM", k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(spacing[0]) * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = plane.tobytes()
        pydicom.dcmwrite(folder / f"{k:04d}.dcm", ds, enforce_file_format=True)
    return folder


def sample_data(out: Path, preset: str, options: SampleOptions) -> Path:
    """`maekit sample-data --preset brats|ct`: BraTS-like MRI cases (8, 32^3) or CT cases (6, 32^3)."""
    if preset == "brats":
        return make_brats_dataset(out, 8 if options.per_class is None else options.per_class,
                                  32 if options.size is None else options.size, seed=options.seed)
    return make_ct_dataset(out, 6 if options.per_class is None else options.per_class,
                           32 if options.size is None else options.size, seed=options.seed)


def example(root: Path) -> Example:
    """Conformance example: four 16^3 BraTS-like cases (some modalities missing), 8^3 patches."""
    from maekit.domains.volume.adapter import VolumeAdapter
    from maekit.domains.volume.datamodule import VolumeDataModule

    data = make_brats_dataset(root, cases=4, size=16, seed=0)
    return Example(VolumeAdapter(patch_size=8),
                   VolumeDataModule(str(data), roi_size=[16, 16, 16], batch_size=2, val_fraction=0.34),
                   native=lambda adapter, batch: adapter.prepare(batch))
