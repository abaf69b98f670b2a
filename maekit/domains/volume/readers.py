"""Medical volumes: finding cases in the public layouts, and loading them onto one grid.

Layouts: BraTS (one file per modality, 2021 `<case>_t1ce.nii.gz` or 2023 `<case>-t1c.nii.gz`
naming), MSD Decathlon (`dataset.json`, several modalities as channels of one file), nnU-Net
raw (`dataset.json` with `channel_names`, `<case>_0000.nii.gz`...), image/label folder pairs
without a `dataset.json` (`images/` + `labels/` or `imagesTr/` + `labelsTr/` of same-named
single-modality files, e.g. an MSD task as often redistributed), and a plain folder of
single-modality volumes (CT): NIfTI files, or DICOM series (one folder of `.dcm` slices each,
read with pydicom through MONAI). Two files never collapse into one case: a second file claiming
a case (and modality) already taken is refused, naming both. Loading goes through MONAI: orientation to RAS, resampling to a
spacing, every modality resampled onto the grid of the case's first one (so a T2 and an ADC
map on different grids become one two-channel volume), per-modality non-zero z-scores (MRI)
or an HU window scaled to [0, 1] (CT). Modalities a case lacks are zeros with
`modality_present` False.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from maekit.lazy import lazy_import
from maekit.domains.volume.spec import BRATS_MODALITIES, MODALITY_ALIASES, canonical_modality
from maekit.errors import DataError

_BRATS_FILE = re.compile(r"^(?P<case>.+?)[_-](?P<mod>t1ce|t1c|t1n|t1|t2w|t2f|t2|flair|seg)\.nii(\.gz)?$", re.I)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
Layout = Literal["auto", "brats", "decathlon", "nnunet", "pairs", "folder"]
#: (images folder, labels folder) names of the `pairs` layout, in the order they are looked for
PAIR_FOLDERS = (("images", "labels"), ("imagesTr", "labelsTr"))
#: layouts whose files hold one modality each, named by the config (or after `kind`)
SINGLE_MODALITY_LAYOUTS = ("pairs", "folder")


@dataclass
class Case:
    """One subject: modality -> (file, channel inside a multi-channel file or None), and a label."""

    name: str
    images: dict[str, tuple[Path, int | None]] = field(default_factory=dict)
    label: Path | None = None


@dataclass
class Unpaired:
    """Files of a `pairs` layout without a partner: images without a label map (fine for
    pretraining, excluded from segmentation) and label maps without an image (never used)."""

    images: list[Path] = field(default_factory=list)
    labels: list[Path] = field(default_factory=list)

    def describe(self, limit: int = 10) -> str:
        """One line naming the unpaired files (the first `limit` of each kind)."""
        parts = []
        for what, paths in (("image(s) without a label map", self.images), ("label map(s) without an image", self.labels)):
            if paths:
                names = ", ".join(p.name for p in paths[:limit]) + (" ..." if len(paths) > limit else "")
                parts.append(f"{len(paths)} {what}: {names}")
        return "; ".join(parts)


def _case_name(path: Path) -> str:
    """`case.nii.gz` -> `case` (DICOM series: the folder's name)."""
    return path.name.split(".nii")[0] if not path.is_dir() else path.name


def _claim(taken: dict[str, Path], key: str, path: Path, what: str) -> None:
    """Record that `path` is `key`; a second file for the same key is refused, naming both."""
    if key in taken and taken[key] != path:
        raise DataError(path, f"and {taken[key]} are both {what}; rename or remove one of them "
                              "(two files never silently become one case)")
    taken[key] = path


def _pair_folders(root: Path) -> tuple[Path, Path] | None:
    """(images, labels) folders of a `pairs` layout under `root`, or None."""
    for images, labels in PAIR_FOLDERS:
        if (root / images).is_dir() and (root / labels).is_dir():
            return root / images, root / labels
    return None


def find_pairs(root: Path) -> tuple[dict[str, Path], dict[str, Path], Unpaired]:
    """Images and label maps of a `pairs` layout by case name, and the files without a partner."""
    folders = _pair_folders(root)
    if folders is None:
        raise DataError(root, "has no image/label folder pair (" + ", ".join(f"{i}/ + {l}/" for i, l in PAIR_FOLDERS)
                        + ")")
    found: list[dict[str, Path]] = []
    for folder in folders:
        files: dict[str, Path] = {}
        for path in sorted(p for p in folder.rglob("*") if _is_nifti(p)):
            _claim(files, _case_name(path), path, f"case {_case_name(path)!r} in {folder.name}/")
        found.append(files)
    images, labels = found
    unpaired = Unpaired(images=[images[k] for k in sorted(set(images) - set(labels))],
                        labels=[labels[k] for k in sorted(set(labels) - set(images))])
    return images, labels, unpaired


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
    if _pair_folders(root) is not None:
        return "pairs"
    return "folder"


def resolve_layout(root: str | Path, layout: Layout = "auto") -> Layout:
    """`layout`, or the one detected under `root` when 'auto'."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    return _detect_layout(root) if layout == "auto" else layout


def layout_modalities(root: str | Path, layout: Layout, kind: str) -> list[str]:
    """The modalities a layout declares: BraTS's file suffixes found (in the kit's order),
    Decathlon's/nnU-Net's `dataset.json`, and `[kind]` (`mri` or `ct`) for the single-modality
    `pairs` and `folder` layouts."""
    root = Path(root)
    layout = resolve_layout(root, layout)
    if layout in SINGLE_MODALITY_LAYOUTS:
        return [kind]
    if layout == "brats":
        found = {canonical_modality(m["mod"]) for p in root.rglob("*.nii*") if (m := _BRATS_FILE.match(p.name))
                 and m["mod"].lower() != "seg"}
        return [m for m in BRATS_MODALITIES if m in found] + sorted(found - set(BRATS_MODALITIES))
    meta = json.loads((root / "dataset.json").read_text())
    table = meta.get("channel_names" if layout == "nnunet" else "modality", {})
    if not table:
        raise DataError(root / "dataset.json", f"names no modalities ({'channel_names' if layout == 'nnunet' else 'modality'})")
    return [canonical_modality(table[k]) for k in sorted(table, key=int)]


def find_cases(root: str | Path, layout: Layout = "auto", modalities: Sequence[str] | None = None,
               unpaired: Unpaired | None = None) -> list[Case]:
    """All cases under `root` in `layout` (detected when 'auto'), sorted by name.

    Single-modality layouts (`pairs`, `folder`) take one modality name (default `ct`). For the
    `pairs` layout, files without a partner are added to `unpaired` when given (images without
    a label map are still cases, without a label).
    """
    root = Path(root)
    layout = resolve_layout(root, layout)
    if layout in SINGLE_MODALITY_LAYOUTS and modalities is not None and len(modalities) > 1:
        raise DataError(root, f"is a {layout} layout of single-modality volumes, but {len(modalities)} modalities "
                              f"{list(modalities)} were asked for: name one (or leave modalities unset)")
    cases: dict[str, Case] = {}
    claimed: dict[str, Path] = {}
    if layout == "brats":
        for path in sorted(p for p in root.rglob("*") if _is_nifti(p)):
            m = _BRATS_FILE.match(path.name)
            if not m:
                continue
            case = cases.setdefault(m["case"], Case(m["case"]))
            mod = m["mod"].lower()
            key = "seg" if mod == "seg" else canonical_modality(mod)
            _claim(claimed, f"{m['case']}/{key}", path, f"case {m['case']!r}'s {key}")
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
                _claim(claimed, name, image, f"case {name!r} in dataset.json")
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
                _claim(claimed, f"{name}/{channel}", path, f"case {name!r}'s channel {channel:04d}")
                case.images[names[channel]] = (path, None)
                label = root / "labelsTr" / f"{name}{suffix}"
                case.label = label if label.exists() else None
    elif layout == "pairs":
        mod = canonical_modality(modalities[0]) if modalities else "ct"
        images, labels, missing = find_pairs(root)
        for name, path in images.items():
            cases[name] = Case(name, {mod: (path, None)}, labels.get(name))
        if unpaired is not None:
            unpaired.images += missing.images
            unpaired.labels += missing.labels
    else:
        mod = canonical_modality(modalities[0]) if modalities else "ct"
        for series in sorted({p.parent for p in root.rglob("*.dcm")}):  # one DICOM series per folder
            _claim(claimed, series.name, series, f"case {series.name!r}")
            cases[series.name] = Case(series.name, {mod: (series, None)})
        for path in sorted(p for p in root.rglob("*") if _is_nifti(p)):
            name = _case_name(path)
            if name.endswith(("_seg", "-seg")):
                continue
            _claim(claimed, name, path, f"case {name!r}")
            labels_found = [q for q in (path.with_name(f"{name}{sep}seg{s}") for sep in "_-" for s in NIFTI_SUFFIXES)
                            if q.exists()]
            if len(labels_found) > 1:
                raise DataError(labels_found[1], f"and {labels_found[0]} are both the label map of case {name!r}; "
                                                 "remove one of them")
            cases[name] = Case(name, {mod: (path, None)}, labels_found[0] if labels_found else None)
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
    lazy_import("monai", "volumes")
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
    lazy_import("nibabel", "volumes")
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
    lazy_import("monai", "volumes")
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
