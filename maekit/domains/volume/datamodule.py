"""The volume dataset (crops, flips, dropped modalities) and its LightningDataModule."""

from __future__ import annotations

import copy
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maekit.data.base import MaekitDataModule
from maekit.errors import ConfigError, DataError
from maekit.domains.volume.readers import (
    Case, Layout, Unpaired, _crop_foreground, _read_case_labels, canonical_modality, find_cases, layout_modalities,
    load_case)


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


    def shard_plan(self, seed: int) -> tuple[Dataset, dict[str, Any]]:
        """Shards store whole preprocessed cases; padding, crops of `roi_size`, flips and dropped
        modalities run at stream time (`FinishVolume`, by this class's own code)."""
        return StoredCases(self), {
            "kind": "volumes", "finish": f"{__name__}:FinishVolume",
            "roi_size": list(self.roi_size) if self.roi_size is not None else None,
            "random_crop": self.random_crop, "flips": self.flips, "drop": list(self.drop)}


class VolumeDataModule(MaekitDataModule):
    """Multimodal MRI or CT volumes in any supported layout, as random 3D crops.

    Args:
        root: dataset folder.
        layout: 'auto' detects BraTS / Decathlon / nnU-Net / image-label folder pairs / plain folder.
        modalities: modalities to load, in order (a model pretrained on more runs on any subset).
            None: what the layout declares (BraTS: the modalities found; Decathlon/nnU-Net: its
            `dataset.json`; `pairs`/`folder`: one modality named after `kind`, `mri` or `ct`),
            resolved at `setup`. The adapter takes them from here (`connect_datamodule`).
        kind: 'mri' (per-modality non-zero z-score) or 'ct' (HU window to [0, 1]).
        pixdim: target spacing in mm (None keeps each case's own).
        roi_size: crop size in voxels.
        labels: declared label values (checked when loading labels). Declaring them means the
            data is for segmentation: cases without a label map are left out, with a note.
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
        labelled_cases: keep only this many training cases (a small labelled set), drawn with
            `labelled_seed` after the validation split, so the validation cases do not change.
            The draw is `maekit probe`'s draw of as many cases with seed `labelled_seed`.
        labelled_seed: seed of that draw (default: `seed`).
    """

    def __init__(self, root: str, layout: Layout = "auto", modalities: list[str] | None = None,
                 kind: Literal["mri", "ct"] = "mri", pixdim: list[float] | None = None,
                 roi_size: list[int] | None = None, labels: list[int] | None = None,
                 ct_window: tuple[float, float] = (-175.0, 250.0), val_fraction: float = 0.2,
                 batch_size: int = 2, num_workers: int = 0, flips: bool = True, seed: int = 0,
                 cache: bool = True, val_whole_volumes: bool = False,
                 drop_modalities: list[str] | None = None, case_labels: str | None = None,
                 crop_foreground: bool = False, labelled_cases: int | None = None,
                 labelled_seed: int | None = None) -> None:
        super().__init__()
        if labelled_cases is not None and labelled_cases < 1:
            raise ConfigError(f"labelled_cases must be at least 1, got {labelled_cases}")
        self.labelled_cases = labelled_cases
        self.labelled_seed = seed if labelled_seed is None else labelled_seed
        self.root, self.layout = Path(root), layout
        #: the modalities delivered, in order (None until `setup` when the layout declares them)
        self.modalities: list[str] | None = [canonical_modality(m) for m in modalities] if modalities else None
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
        if self.modalities is not None:
            self._check_drops()
        #: files of an image/label folder pair without a partner (listed once at `setup`)
        self.unpaired = Unpaired()
        self.datasets: dict[str, VolumeDataset] = {}

    def _check_drops(self) -> None:
        assert self.modalities is not None
        unknown = sorted(set(self.drop_modalities) - set(self.modalities))
        if unknown:
            raise ConfigError(f"drop_modalities {unknown} are not among the modalities {self.modalities}")

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.modalities is None:
            self.modalities = layout_modalities(self.root, self.layout, self.kind)
            self._check_drops()
        cases = find_cases(self.root, self.layout, self.modalities, unpaired=self.unpaired)
        if self.unpaired.images or self.unpaired.labels:
            what = ("left out of segmentation" if self.labels is not None else "used for pretraining without labels")
            warnings.warn(f"{self.root}: {self.unpaired.describe()} (images without labels are {what}; "
                          "labels without images are not used)", stacklevel=2)
        if self.labels is not None:  # segmentation: every case needs its label map
            unlabelled = [c.name for c in cases if c.label is None]
            if unlabelled and not self.unpaired.images:  # unpaired images are already named above
                warnings.warn(f"{self.root}: {len(unlabelled)} case(s) without a label map left out of segmentation: "
                              f"{', '.join(unlabelled[:10])}", stacklevel=2)
            cases = [c for c in cases if c.label is not None]
            if not cases:
                raise DataError(self.root, "has no case with a label map, and labels are declared (segmentation)")
        elif any(c.label is None for c in cases):  # pretraining: one batch must not mix cases with and without masks
            cases = [Case(c.name, c.images, None) for c in cases]
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
        val, train = self.seeded_split(cases, self.val_fraction, at_least_one=True)
        if self.labelled_cases is not None:
            train = self._labelled(train)
        splits = {"val": val, "train": train}
        for name, chosen in splits.items():
            train = name == "train"
            roi = None if (not train and self.val_whole_volumes) else self.roi_size
            self.datasets[name] = VolumeDataset(chosen, self.modalities, self.kind, self.pixdim, roi,
                                                random_crop=train, flips=train and self.flips,
                                                labels=self.labels, ct_window=self.ct_window, cache=self.cache,
                                                drop=[self.modalities.index(m) for m in self.drop_modalities],
                                                case_class=class_of or None, crop_foreground=self.crop_foreground)

    def _labelled(self, train: list[Case]) -> list[Case]:
        """`labelled_cases` of the training cases, drawn with `labelled_seed`, in their order."""
        assert self.labelled_cases is not None
        if self.labels is None:
            raise ConfigError("labelled_cases keeps a few labelled training cases: declare the labels "
                              "(data.labels) so the data is read for segmentation")
        if self.labelled_cases > len(train):
            raise ConfigError(f"labelled_cases {self.labelled_cases}: {self.root} has only {len(train)} training "
                              f"case(s) with a label map after the validation split")
        keep = np.random.default_rng(self.labelled_seed).choice(len(train), self.labelled_cases, replace=False)
        return [train[i] for i in sorted(int(i) for i in keep)]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    #: training volumes are cropped to one size: every batch is full-sized, none is dropped
    drop_last_train = False

    @property
    def eval_batch_size(self) -> int:
        """1 when validation runs on whole volumes of different sizes."""
        return 1 if self.val_whole_volumes else self.batch_size



class StoredCases(Dataset):
    """Whole preprocessed cases of a `VolumeDataset` (before padding, cropping, flips, drops)."""

    def __init__(self, source: VolumeDataset) -> None:
        self.source = copy.copy(source)
        self.source.cache, self.source._cache = False, {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.source.load(index))
        item["case"] = self.source.cases[index].name
        if self.source.case_class is not None:
            item["case_label"] = torch.tensor(self.source.case_class[item["case"]], dtype=torch.long)
        return item


class _StoredVolume(VolumeDataset):
    """`VolumeDataset`'s padding, cropping, flips and drops applied to one stored case."""

    stored: dict[str, Any] = {}

    def load(self, index: int) -> dict[str, Any]:
        return self.stored


class FinishVolume:
    """A stored case -> the source's padded, cropped, flipped sample with dropped modalities."""

    def __init__(self, spec: dict[str, Any], augment: bool) -> None:
        self.helper = _StoredVolume([], [], "mri", None, spec["roi_size"], random_crop=spec["random_crop"] and augment,
                                    flips=spec["flips"] and augment, cache=False, drop=spec["drop"])

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        self.helper.stored = {k: v for k, v in item.items() if k not in ("case", "case_label")}
        self.helper.cases = [Case(item["case"])]
        out = self.helper[0]
        if "case_label" in item:
            out["label"] = item["case_label"]
        return out
