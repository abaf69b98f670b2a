"""Medical volumes: finding cases in the public layouts, and loading them onto one grid.

Layouts: BraTS (one file per modality, 2021 `<case>_t1ce.nii.gz` or 2023 `<case>-t1c.nii.gz`
naming), MSD Decathlon (`dataset.json`, several modalities as channels of one file), nnU-Net
raw (`dataset.json` with `channel_names`, `<case>_0000.nii.gz`...), and a plain folder of
single-modality volumes (CT): NIfTI files, or DICOM series (one folder of `.dcm` slices each,
read with pydicom through MONAI). Loading goes through MONAI: orientation to RAS, resampling to a
spacing, every modality resampled onto the grid of the case's first one (so a T2 and an ADC
map on different grids become one two-channel volume), per-modality non-zero z-scores (MRI)
or an HU window scaled to [0, 1] (CT). Modalities a case lacks are zeros with
`modality_present` False.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from maekit.datasets.resumable import ResumableLoader, training_loader
from maekit.errors import ConfigError, DataError

#: public modality names -> the kit's names (BraTS 2021 names are the kit's)
MODALITY_ALIASES = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "native": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair",
    "adc": "adc", "ct": "ct",
}
_BRATS_FILE = re.compile(r"^(?P<case>.+?)[_-](?P<mod>t1ce|t1c|t1n|t1|t2w|t2f|t2|flair|seg)\.nii(\.gz)?$", re.I)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
Layout = Literal["auto", "brats", "decathlon", "nnunet", "folder"]


def canonical_modality(name: str) -> str:
    """The kit's name of a modality (`T1Gd` -> `t1ce`, `t2f` -> `flair`); unknown names lower-cased."""
    return MODALITY_ALIASES.get(name.strip().lower(), name.strip().lower())


@dataclass
class Case:
    """One subject: modality -> (file, channel inside a multi-channel file or None), and a label."""

    name: str
    images: dict[str, tuple[Path, int | None]] = field(default_factory=dict)
    label: Path | None = None


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def _detect_layout(root: Path) -> Layout:
    meta = root / "dataset.json"
    if meta.is_file():
        keys = json.loads(meta.read_text())
        return "nnunet" if "channel_names" in keys else "decathlon"
    matches = (_BRATS_FILE.match(p.name) for p in root.rglob("*.nii*"))
    if any(m and m["mod"].lower() != "seg" for m in matches):
        return "brats"
    return "folder"


def find_cases(root: str | Path, layout: Layout = "auto", modalities: Sequence[str] | None = None) -> list[Case]:
    """All cases under `root` in `layout` (detected when 'auto'), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    if layout == "auto":
        layout = _detect_layout(root)
    cases: dict[str, Case] = {}
    if layout == "brats":
        for path in sorted(p for p in root.rglob("*") if _is_nifti(p)):
            m = _BRATS_FILE.match(path.name)
            if not m:
                continue
            case = cases.setdefault(m["case"], Case(m["case"]))
            mod = m["mod"].lower()
            if mod == "seg":
                case.label = path
            else:
                case.images[canonical_modality(mod)] = (path, None)
    elif layout in ("decathlon", "nnunet"):
        meta = json.loads((root / "dataset.json").read_text())
        if layout == "decathlon":
            names = {int(k): canonical_modality(v) for k, v in meta.get("modality", {}).items()}
            for entry in meta.get("training", []):
                image = root / entry["image"]
                name = image.name.split(".nii")[0]
                case = Case(name, label=root / entry["label"] if entry.get("label") else None)
                if not image.exists():
                    raise DataError(image, "listed in dataset.json but missing")
                single = len(names) == 1
                case.images = {mod: (image, None if single else ch) for ch, mod in names.items()}
                cases[name] = case
        else:
            names = {int(k): canonical_modality(v) for k, v in meta["channel_names"].items()}
            suffix = meta.get("file_ending", ".nii.gz")
            for path in sorted((root / "imagesTr").glob(f"*_[0-9][0-9][0-9][0-9]{suffix}")):
                stem = path.name[: -len(suffix)]
                name, channel = stem[:-5], int(stem[-4:])
                case = cases.setdefault(name, Case(name))
                if channel not in names:
                    raise DataError(path, f"channel {channel:04d} is not in dataset.json's channel_names {names}")
                case.images[names[channel]] = (path, None)
                label = root / "labelsTr" / f"{name}{suffix}"
                case.label = label if label.exists() else None
    else:
        mod = canonical_modality(modalities[0]) if modalities else "ct"
        for series in sorted({p.parent for p in root.rglob("*.dcm")}):  # one DICOM series per folder
            cases[series.name] = Case(series.name, {mod: (series, None)})
        for path in sorted(p for p in root.rglob("*") if _is_nifti(p)):
            name = path.name.split(".nii")[0]
            if name.endswith(("_seg", "-seg")):
                continue
            label = next((q for q in (path.with_name(f"{name}_seg{s}") for s in NIFTI_SUFFIXES) if q.exists()), None)
            cases[name] = Case(name, {mod: (path, None)}, label)
    if not cases:
        raise DataError(root, f"holds no cases in the {layout} layout")
    return [cases[k] for k in sorted(cases)]


def _check_volume(path: Path, volume: torch.Tensor, channel: int | None) -> torch.Tensor:
    """(C, X, Y, Z) from LoadImage -> (1, X, Y, Z), with clear errors for wrong dimensionality."""
    spatial = volume.dim() - 1
    if spatial == 2:
        raise DataError(path, f"is a 2-D image of shape {tuple(volume.shape[1:])}; a 3-D volume is expected")
    if spatial != 3:
        raise DataError(path, f"has {spatial} spatial dimensions; a 3-D volume is expected")
    if channel is None and volume.shape[0] > 1:
        raise DataError(path, f"is 4-D (shape {tuple(volume.shape[1:])} x {volume.shape[0]}); a 3-D volume is "
                              "expected here: split it into one file per volume, or describe its channels as "
                              "modalities in a Decathlon dataset.json")
    if channel is not None:
        if channel >= volume.shape[0]:
            raise DataError(path, f"has {volume.shape[0]} channels; channel {channel} was asked for")
        volume = volume[channel:channel + 1]
    if not torch.isfinite(volume).all():
        bad = int((~torch.isfinite(volume)).sum())
        raise DataError(path, f"contains {bad} NaN/inf voxels")
    return volume


def _crop_foreground(item: dict[str, Any]) -> dict[str, Any]:
    """Crop a loaded case to the bounding box of its non-zero voxels (any modality); crops only,
    so training windows are drawn from the body or brain rather than from air."""
    from monai.transforms.utils import generate_spatial_bounding_box

    start, end = generate_spatial_bounding_box(item["image"], select_fn=lambda x: x != 0)
    window = tuple(slice(s, e) for s, e in zip(start, end))
    out = dict(item, image=item["image"][(slice(None), *window)])
    if "label" in item:
        out["label"] = item["label"][window]
    return out


def _read_case_labels(root: Path, table: str) -> dict[str, str]:
    """case name -> class name from a two-column CSV (an optional header row is skipped)."""
    import csv

    path = Path(table) if Path(table).is_absolute() else root / table
    if not path.is_file():
        raise DataError(path, "case-label file does not exist")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(cell.strip() for cell in r)]
    if rows and rows[0][0].strip().lower() in ("case", "subject", "id", "name"):
        rows = rows[1:]
    bad = [i for i, r in enumerate(rows, start=1) if len(r) < 2 or not r[1].strip()]
    if bad:
        raise DataError(path, f"row(s) {bad[:5]} do not have a case and a label")
    return {r[0].strip(): r[1].strip() for r in rows}


def _plain(t: Any) -> torch.Tensor:
    """A plain tensor (MONAI's MetaTensor would carry its metadata into every later result)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _has_spatial_header(path: Path) -> bool:
    import nibabel as nib

    if path.is_dir():  # DICOM series carry their geometry in every slice
        return True
    header = nib.load(str(path)).header
    return int(header.get("sform_code", 0)) > 0 or int(header.get("qform_code", 0)) > 0


def load_case(
    case: Case,
    modalities: Sequence[str],
    kind: Literal["mri", "ct"] = "mri",
    pixdim: Sequence[float] | None = (1.0, 1.0, 1.0),
    ct_window: tuple[float, float] = (-175.0, 250.0),
    labels: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Load one case onto one RAS grid.

    Returns `image` (M, X, Y, Z) float32 (missing modalities zero), `modality_present` (M,)
    bool, `affine` (4, 4) of the grid, and `label` (X, Y, Z) long when the case has one (as
    indices into `labels` when they are declared).
    """
    from monai.transforms import LoadImage, NormalizeIntensity, Orientation, ResampleToMatch, Spacing

    loader = LoadImage(image_only=True, ensure_channel_first=True)
    dicom = LoadImage(image_only=True, ensure_channel_first=True, reader="PydicomReader")
    orient = Orientation(axcodes="RAS")
    space = Spacing(pixdim=tuple(pixdim), mode="bilinear") if pixdim else None
    wanted = [canonical_modality(m) for m in modalities]
    found = [m for m in wanted if m in case.images]
    if not found:
        raise DataError(case.images[next(iter(case.images))][0] if case.images else case.name,
                        f"case {case.name} has none of the modalities {wanted} (it has {sorted(case.images)})")
    reference = None
    volumes: dict[str, torch.Tensor] = {}
    for mod in found:
        path, channel = case.images[mod]
        try:
            vol = dicom(str(path)) if path.is_dir() else loader(str(path))
        except Exception as err:  # MONAI/nibabel/pydicom raise many kinds of errors for broken files
            kind_of = "a DICOM series (is pydicom installed?)" if path.is_dir() else "NIfTI"
            raise DataError(path, f"cannot be read as {kind_of}: {err}") from err
        vol = orient(_check_volume(path, vol, channel).float())
        if space is not None:
            vol = space(vol)
        if reference is None:
            reference, ref_path = vol, path
        elif vol.shape != reference.shape or not torch.allclose(vol.affine, reference.affine, atol=1e-3):
            if not (_has_spatial_header(path) and _has_spatial_header(ref_path)):
                raise DataError(path, f"has shape {tuple(vol.shape[1:])} but {ref_path.name} has "
                                      f"{tuple(reference.shape[1:])}, and without an affine in both headers "
                                      "they cannot be resampled onto one grid")
            vol = ResampleToMatch(mode="bilinear")(vol, reference)
        volumes[mod] = vol[0]
    assert reference is not None
    image = torch.zeros(len(wanted), *reference.shape[1:])
    present = torch.zeros(len(wanted), dtype=torch.bool)
    for i, mod in enumerate(wanted):
        if mod in volumes:
            image[i] = _plain(volumes[mod])
            present[i] = True
    if kind == "ct":
        lo, hi = ct_window
        image = ((image - lo) / (hi - lo)).clamp(0, 1) * present[:, None, None, None]
    else:
        for i in range(len(wanted)):
            if present[i]:
                image[i] = _plain(NormalizeIntensity(nonzero=True)(image[i]))
    out: dict[str, Any] = {"image": image, "modality_present": present,
                           "affine": _plain(reference.affine).double(), "source": str(ref_path)}
    if case.label is not None:
        lab = orient(_check_volume(case.label, loader(str(case.label)), None))
        if space is not None:
            lab = Spacing(pixdim=tuple(pixdim), mode="nearest")(lab)  # type: ignore[arg-type]
        if lab.shape != reference.shape or not torch.allclose(lab.affine, reference.affine, atol=1e-3):
            lab = ResampleToMatch(mode="nearest")(lab, reference)
        lab = _plain(lab[0]).round().long()
        if labels is not None:  # declared values -> class indices 0..K-1 (BraTS 0,1,2,4 -> 0..3)
            unexpected = sorted(set(lab.unique().tolist()) - set(labels))
            if unexpected:
                raise DataError(case.label, f"holds label values {unexpected} outside the declared set {list(labels)}")
            lookup = torch.zeros(max(labels) + 1, dtype=torch.long)
            lookup[torch.tensor(list(labels))] = torch.arange(len(labels))
            lab = lookup[lab]
        out["label"] = lab
    return out


class VolumeDataset(Dataset):
    """Cases as training samples: random (or centred) crops of `roi_size`, optional flips.

    Volumes smaller than the crop are padded with zeros (the mean after normalisation) and the
    padding is marked invalid. `roi_size` None hands whole volumes (with their affine and case
    name). Loaded cases are kept in memory when `cache` is True.
    """

    def __init__(self, cases: Sequence[Case], modalities: Sequence[str], kind: Literal["mri", "ct"],
                 pixdim: Sequence[float] | None, roi_size: Sequence[int] | None, random_crop: bool, flips: bool,
                 labels: Sequence[int] | None = None, ct_window: tuple[float, float] = (-175.0, 250.0),
                 cache: bool = True, drop: Sequence[int] = (), case_class: dict[str, int] | None = None,
                 crop_foreground: bool = False) -> None:
        self.cases, self.modalities, self.kind = list(cases), list(modalities), kind
        self.pixdim, self.roi_size = pixdim, tuple(roi_size) if roi_size is not None else None
        self.random_crop, self.flips, self.labels, self.ct_window = random_crop, flips, labels, ct_window
        self.cache, self.drop, self.case_class = cache, list(drop), case_class
        self.crop_foreground = crop_foreground
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def load(self, index: int) -> dict[str, Any]:
        if index in self._cache:
            return self._cache[index]
        item = load_case(self.cases[index], self.modalities, self.kind, self.pixdim, self.ct_window, self.labels)
        if self.crop_foreground and self.roi_size is not None:
            item = _crop_foreground(item)
        if self.cache:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.load(index))
        if self.drop:  # simulated missing modalities
            item["image"], item["modality_present"] = item["image"].clone(), item["modality_present"].clone()
            item["image"][self.drop] = 0.0
            item["modality_present"][self.drop] = False
        image, label = item["image"], item.get("label")
        valid = torch.ones(image.shape[1:], dtype=torch.bool)
        if self.roi_size is None:  # whole volumes (sliding-window validation and prediction)
            out = {"image": image, "modality_present": item["modality_present"], "valid": valid,
                   "affine": item["affine"], "case": self.cases[index].name, "source": item["source"]}
            if label is not None:
                out["mask"] = label
            return self._with_class(out, index)
        pads = [max(0, r - s) for r, s in zip(self.roi_size, image.shape[1:])]
        if any(pads):
            spec = [v for p in reversed(pads) for v in (p // 2, p - p // 2)]
            image = torch.nn.functional.pad(image, spec)
            valid = torch.nn.functional.pad(valid, spec, value=False)
            if label is not None:
                label = torch.nn.functional.pad(label, spec)
        starts = [random.randint(0, s - r) if self.random_crop else (s - r) // 2
                  for s, r in zip(image.shape[1:], self.roi_size)]
        window = tuple(slice(b, b + r) for b, r in zip(starts, self.roi_size))
        image, valid = image[(slice(None), *window)], valid[window]
        label = label[window] if label is not None else None
        if self.flips:
            for axis in range(3):
                if random.random() < 0.5:
                    image, valid = image.flip(1 + axis), valid.flip(axis)
                    label = label.flip(axis) if label is not None else None
        out = {"image": image.contiguous(), "modality_present": item["modality_present"], "valid": valid}
        if label is not None:
            out["mask"] = label.contiguous()
        return self._with_class(out, index)

    def _with_class(self, out: dict[str, Any], index: int) -> dict[str, Any]:
        if self.case_class is not None:
            out["label"] = torch.tensor(self.case_class[self.cases[index].name], dtype=torch.long)
        return out


class VolumeDataModule(L.LightningDataModule):
    """Multimodal MRI or CT volumes in any supported layout, as random 3D crops.

    Args:
        root: dataset folder.
        layout: 'auto' detects BraTS / Decathlon / nnU-Net / plain folder.
        modalities: modalities to load, in order (a model pretrained on more runs on any subset).
        kind: 'mri' (per-modality non-zero z-score) or 'ct' (HU window to [0, 1]).
        pixdim: target spacing in mm (None keeps each case's own).
        roi_size: crop size in voxels.
        labels: declared label values (checked when loading labels).
        ct_window: HU window for CT.
        val_fraction: share of cases kept for validation (seeded); 1 puts every case in the
            validation/prediction set.
        batch_size, num_workers, seed, cache: loader settings.
        val_whole_volumes: validate (and predict) on whole volumes, one per batch, for
            sliding-window inference.
        drop_modalities: treat these as missing in every case (zeros, `modality_present` False),
            e.g. to reconstruct a modality and compare it with the real one.
        case_labels: CSV of case-level labels (first column the case name, second its class;
            a header row is allowed), relative to `root` or absolute; adds `label` to items for
            `ClassificationTask`. Cases it does not list are skipped with a warning.
        crop_foreground: crop training cases to their non-zero bounding box before cropping
            windows (MRI: the brain; CT after windowing: the body).
    """

    def __init__(self, root: str, layout: Layout = "auto", modalities: list[str] | None = None,
                 kind: Literal["mri", "ct"] = "mri", pixdim: list[float] | None = None,
                 roi_size: list[int] | None = None, labels: list[int] | None = None,
                 ct_window: tuple[float, float] = (-175.0, 250.0), val_fraction: float = 0.2,
                 batch_size: int = 2, num_workers: int = 0, flips: bool = True, seed: int = 0,
                 cache: bool = True, val_whole_volumes: bool = False,
                 drop_modalities: list[str] | None = None, case_labels: str | None = None,
                 crop_foreground: bool = False) -> None:
        super().__init__()
        self.root, self.layout = Path(root), layout
        self.modalities = [canonical_modality(m) for m in (modalities or ["t1", "t1ce", "t2", "flair"])]
        self.kind, self.pixdim = kind, pixdim
        self.roi_size = list(roi_size or [96, 96, 96])
        if len(self.roi_size) != 3:
            raise ConfigError(f"roi_size needs 3 values, got {self.roi_size}")
        self.labels, self.ct_window = labels, tuple(ct_window)
        self.val_fraction, self.batch_size, self.num_workers = val_fraction, batch_size, num_workers
        self.flips, self.seed, self.cache = flips, seed, cache
        self.val_whole_volumes = val_whole_volumes
        self.case_labels = case_labels
        self.crop_foreground = crop_foreground
        self.classes: list[str] = []
        self.drop_modalities = [canonical_modality(m) for m in (drop_modalities or [])]
        unknown = sorted(set(self.drop_modalities) - set(self.modalities))
        if unknown:
            raise ConfigError(f"drop_modalities {unknown} are not among the modalities {self.modalities}")
        self.datasets: dict[str, VolumeDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cases = find_cases(self.root, self.layout, self.modalities)
        usable = [c for c in cases if set(c.images) & set(self.modalities)]
        if len(usable) < len(cases):
            skipped = sorted(c.name for c in cases if c not in usable)
            if not usable:
                raise DataError(self.root, f"no case has any of the modalities {self.modalities}")
            warnings.warn(f"{self.root}: skipping {len(skipped)} case(s) with none of the modalities "
                          f"{self.modalities}: {', '.join(skipped[:10])}", stacklevel=2)
        cases = usable
        class_of: dict[str, int] = {}
        if self.case_labels is not None:
            table = _read_case_labels(self.root, self.case_labels)
            self.classes = sorted(set(table.values()))
            unlisted = [c.name for c in cases if c.name not in table]
            if unlisted:
                warnings.warn(f"{self.case_labels}: no label for {len(unlisted)} case(s), skipped: "
                              f"{', '.join(unlisted[:10])}", stacklevel=2)
            cases = [c for c in cases if c.name in table]
            if not cases:
                raise DataError(self.case_labels, f"labels none of the cases under {self.root}")
            class_of = {name: self.classes.index(value) for name, value in table.items()}
        order = list(range(len(cases)))
        random.Random(self.seed).shuffle(order)
        n_val = int(round(self.val_fraction * len(cases)))
        if 0 < self.val_fraction < 1 and len(cases) > 1:  # at least one case on each side
            n_val = min(max(n_val, 1), len(cases) - 1)
        splits = {"val": [cases[i] for i in order[:n_val]], "train": [cases[i] for i in order[n_val:]]}
        for name, chosen in splits.items():
            train = name == "train"
            roi = None if (not train and self.val_whole_volumes) else self.roi_size
            self.datasets[name] = VolumeDataset(chosen, self.modalities, self.kind, self.pixdim, roi,
                                                random_crop=train, flips=train and self.flips,
                                                labels=self.labels, ct_window=self.ct_window, cache=self.cache,
                                                drop=[self.modalities.index(m) for m in self.drop_modalities],
                                                case_class=class_of or None, crop_foreground=self.crop_foreground)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_dataloader(self) -> ResumableLoader:
        return training_loader(self, self.datasets["train"], self.batch_size, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        size = 1 if self.val_whole_volumes else self.batch_size
        return DataLoader(self.datasets["val"], batch_size=size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()


