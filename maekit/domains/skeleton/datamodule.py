"""The skeleton-sequence dataset (temporal crop-resize, rotation, shear) and its LightningDataModule."""

from __future__ import annotations

import copy
import math
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maekit.data.base import MaekitDataModule
from maekit.domains.skeleton.spec import Topology, TopologySpec
from maekit.errors import ConfigError, DataError
from maekit.domains.skeleton.readers import (
    MSR_NAME, MSR_TRAIN_SUBJECTS, NTU_NAME, SkeletonArrays, XSUB_TRAIN_SUBJECTS, XVIEW_TRAIN_CAMERAS, centre_sequence,
    load_msr_file, load_skeleton_file, read_array_file)


def valid_frames(x: np.ndarray) -> np.ndarray:
    """Indices of frames where any person has a non-zero joint."""
    return np.flatnonzero(np.abs(x).sum((0, 2, 3)) > 0)


def crop_resize(x: torch.Tensor, frames: int, ratio: float, start: float) -> torch.Tensor:
    """Crop `ratio` of the time axis of (C, T, V, M) starting at fraction `start` of the slack,
    and resample the crop to `frames` frames by linear interpolation."""
    c, t, v, m = x.shape
    length = max(1, min(t, int(round(t * ratio))))
    begin = int((t - length) * start)
    crop = x[:, begin:begin + length]
    flat = crop.permute(0, 2, 3, 1).reshape(1, c * v * m, length)
    resized = torch.nn.functional.interpolate(flat, size=frames, mode="linear", align_corners=False)
    return resized.reshape(c, v, m, frames).permute(0, 3, 1, 2).contiguous()


def random_linear_map(channels: int, rotation_deg: float, shear: float, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
    """(C, C) random rotation (each axis by up to `rotation_deg`; in-plane for 2D) times a random
    shear (off-diagonal terms up to `shear`), as in MAMP/AimCLR's augmentations."""
    def u(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * 2 - 1

    matrix = torch.eye(channels)
    if rotation_deg:
        angles = u(3 if channels == 3 else 1) * math.radians(rotation_deg)
        if channels == 3:
            cx, cy, cz = angles.cos()
            sx, sy, sz = angles.sin()
            rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
            ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
            matrix = rz @ ry @ rx
        elif channels == 2:
            c, s = angles.cos()[0], angles.sin()[0]
            matrix = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    if shear:
        sh = torch.eye(channels) + u(channels, channels) * shear * (1 - torch.eye(channels))
        matrix = matrix @ sh
    return matrix.float()


# ------------------------------------------------------------------------------ dataset

@dataclass
class SkeletonSample:
    """Where one sequence comes from: a `.skeleton` file, or row `index` of an array."""

    name: str
    label: int | None
    path: Path | None = None
    array: np.ndarray | None = None  # (C, T, V, M), for array sources


class SkeletonDataset(Dataset):
    """Sequences as fixed-length items, with training-time augmentations.

    Args:
        samples: where each sequence comes from.
        topology: the skeleton layout.
        channels, persons, frames: C, M and T of the items.
        train: random crop ratio in `crop_ratio`, rotation and shear; else the whole valid span.
        crop_ratio: (min, max) share of the valid frames kept by the temporal crop.
        rotation: maximum rotation per axis in degrees; shear: maximum shear coefficient.
        scale: divide every sequence by its largest absolute coordinate (2D pixel keypoints).
        cache: keep parsed `.skeleton` files in memory.
    """

    def __init__(self, samples: list[SkeletonSample], topology: Topology, channels: int, persons: int,
                 frames: int, train: bool, crop_ratio: tuple[float, float] = (0.5, 1.0), rotation: float = 0.0,
                 shear: float = 0.0, scale: bool = False, cache: bool = True) -> None:
        self.samples, self.topology = samples, topology
        self.channels, self.persons, self.frames, self.train = channels, persons, frames, train
        self.crop_ratio, self.rotation, self.shear, self.scale = crop_ratio, rotation, shear, scale
        self.cache = cache
        self._parsed: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(C, T_valid, V, M) centred and trimmed to its valid frames, and person_present (M,)."""
        if index in self._parsed:
            return self._parsed[index]
        sample = self.samples[index]
        where = sample.path if sample.path is not None else sample.name
        if sample.path is not None and MSR_NAME.match(sample.path.name):
            x, present = load_msr_file(sample.path, self.topology, self.persons)
        elif sample.path is not None:
            x, present = load_skeleton_file(sample.path, self.topology, self.persons)
        else:
            x = np.asarray(sample.array, np.float32)
            if x.shape[-1] > self.persons:
                x = x[..., : self.persons]
            elif x.shape[-1] < self.persons:
                x = np.concatenate([x, np.zeros((*x.shape[:-1], self.persons - x.shape[-1]), np.float32)], -1)
            present = np.abs(x).sum((0, 1, 2)) > 0
            frames = valid_frames(x)
            if not len(frames):
                raise DataError(where, "has zero valid frames (every coordinate is 0)")
            x = centre_sequence(x[:, frames[0]:frames[-1] + 1], self.topology.centre_index)
        if self.scale:
            x = x / max(float(np.abs(x).max()), 1e-6)
        if sample.path is not None and self.cache:
            self._parsed[index] = (x, present)
        return x, present

    def __getitem__(self, index: int) -> dict[str, Any]:
        x_np, present = self.load(index)
        x = torch.from_numpy(np.ascontiguousarray(x_np))
        if self.train:
            lo, hi = self.crop_ratio
            ratio = lo + (hi - lo) * float(torch.rand(()))
            x = crop_resize(x, self.frames, ratio, float(torch.rand(())))
            if self.rotation or self.shear:
                matrix = random_linear_map(self.channels, self.rotation, self.shear)
                x = torch.einsum("ij,jtvm->itvm", matrix, x)
        else:
            x = crop_resize(x, self.frames, 1.0, 0.0)
        x = x * torch.from_numpy(present.astype(np.float32))  # absent persons stay exactly zero
        item: dict[str, Any] = {"skeleton": x.float(), "person_present": torch.from_numpy(present.copy())}
        label = self.samples[index].label
        if label is not None:
            item["label"] = torch.tensor(label, dtype=torch.long)
        return item


    def shard_plan(self, seed: int) -> tuple[Dataset, dict[str, Any]]:
        """Shards store centred sequences trimmed to their valid frames; the temporal crop-resize,
        rotation and shear run at stream time (`FinishSkeleton`, by this class's own code)."""
        return StoredSequences(self), {
            "kind": "skeleton", "finish": f"{__name__}:FinishSkeleton", "train": self.train,
            "crop_ratio": list(self.crop_ratio), "rotation": self.rotation, "shear": self.shear,
            "channels": self.channels, "persons": self.persons, "frames": self.frames}


# --------------------------------------------------------------------------- datamodule

Source = Literal["auto", "skeleton", "msr", "npz", "npy"]
Split = Literal["xsub", "xview", "xset", "random"]


class SkeletonDataModule(MaekitDataModule):
    """Skeleton action sequences from NTU `.skeleton` files, MSR Action3D `skeleton3D.txt`
    files or preprocessed arrays.

    Args:
        root: a folder of `.skeleton` files or of MSR Action3D `aXX_sYY_eZZ_skeleton3D.txt` files
            (searched recursively), an `.npz` (NTU-style `x_train`/`y_train`/`x_test`/`y_test`)
            or an `.npy` of (N, C, T, V, M).
        source: 'auto' decides from `root` ('msr' for a folder of `skeleton3D.txt` files).
        topology: skeleton layout: 'ntu25', 'kinect20', 'coco17' or a mapping (joints,
            edges/parents, parts, centre). None (the default): the topology of the adapter of
            the model trained on this data (so a config names it once, on the adapter), else
            'kinect20' for MSR files and 'ntu25' otherwise. Given on both, they must agree.
        channels: coordinates per joint (3 xyz, 2 image keypoints).
        persons: person slots M (NTU: 2, the two most active bodies).
        frames: T, the length every sequence is cropped and resized to (MAMP: 120).
        split: for MSR folders 'xsub' is the cross-subject protocol (odd subjects 1, 3, 5, 7, 9
            train, even ones test). For `.skeleton` folders, 'xsub' (NTU cross-subject), 'xview'
            (cameras 2, 3 train),
            'xset' (even setups train, NTU-120) or 'random' (`val_fraction`, seeded). An `.npz`
            brings its own split (x_test, else a random `val_fraction` of x_train); an `.npy`
            is split at random.
        val_fraction: share held out by the random split.
        labels: `.npy` of labels for an `.npy` root.
        exclude: text file of sample names to skip (e.g. NTU's list of samples with missing
            skeletons), one per line.
        crop_ratio: (min, max) share of a sequence's valid frames the training crop keeps.
        rotation: maximum random rotation per axis, degrees (training only).
        shear: maximum random shear coefficient (training only).
        scale: divide each sequence by its largest absolute coordinate (2D pixel keypoints).
        skip_invalid: every sequence is read and checked at `setup`; with True, bad ones (all
            zeros, a wrong value count, NaNs, no valid frame) are skipped and listed once, else
            the first bad one is an error naming its file.
        batch_size, num_workers, seed: loader settings.

    Labels of `.skeleton` files come from the action in their name (`A023` -> the index of 23
    among the actions found, sorted; `classes` lists them); `num_classes` is their count (an
    `.npz` gives its own: the one-hot width or the largest label + 1).
    """

    def __init__(self, root: str, source: Source = "auto", topology: TopologySpec | None = None, channels: int = 3,
                 persons: int = 2, frames: int = 120, split: Split = "xsub", val_fraction: float = 0.2,
                 labels: str | None = None, exclude: str | None = None,
                 crop_ratio: tuple[float, float] = (0.5, 1.0), rotation: float = 0.0, shear: float = 0.0,
                 scale: bool = False, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 skip_invalid: bool = False) -> None:
        super().__init__()
        self.root, self.source = Path(root), source
        #: the skeleton layout (None until `setup` when neither given here nor yet known)
        self.topology: Topology | None = Topology.resolve(topology) if topology is not None else None
        self.skip_invalid = skip_invalid
        #: sequences skipped at setup by `skip_invalid`: (name, reason)
        self.skipped: list[tuple[str, str]] = []
        self.channels, self.persons, self.frames = channels, persons, frames
        self.split, self.val_fraction, self.labels, self.exclude = split, val_fraction, labels, exclude
        lo, hi = crop_ratio
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"crop_ratio {crop_ratio} must satisfy 0 < min <= max <= 1")
        self.crop_ratio, self.rotation, self.shear, self.scale = (float(lo), float(hi)), rotation, shear, scale
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.classes: list[str] = []
        self._num_classes = 0
        self.datasets: dict[str, SkeletonDataset] = {}

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def _source(self) -> Source:
        if self.source != "auto":
            return self.source
        if self.root.is_dir():
            if not any(self.root.rglob("*.skeleton")) and any(
                    MSR_NAME.match(p.name) for p in self.root.rglob("*_skeleton3D.txt")):
                return "msr"
            return "skeleton"
        if self.root.suffix in (".npz", ".npy"):
            return self.root.suffix[1:]  # type: ignore[return-value]
        raise DataError(self.root, "is neither a folder of .skeleton files nor an .npz/.npy file")

    def _random_split(self, n: int) -> tuple[list[int], list[int]]:
        val, train = self.seeded_split(range(n), self.val_fraction, at_least_one=True)
        return train, val

    def _skeleton_samples(self) -> dict[str, list[SkeletonSample]]:
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist")
        files = sorted(self.root.rglob("*.skeleton"))
        if self.exclude:
            epath = Path(self.exclude)
            if not epath.is_file():
                raise DataError(epath, "exclude list does not exist")
            skip = {w.strip() for w in epath.read_text().split() if w.strip()}
            files = [f for f in files if f.stem not in skip]
        if not files:
            raise DataError(self.root, "holds no .skeleton files")
        names = [NTU_NAME.search(f.stem) for f in files]
        if self.split != "random":
            bad = [f for f, m in zip(files, names) if m is None]
            if bad:
                raise DataError(bad[0], f"name does not follow NTU's SsssCcccPpppRrrrAaaa, needed by split "
                                        f"{self.split!r}; use split: random")
        labelled = all(m is not None for m in names)
        if not labelled:
            warnings.warn(f"{self.root}: some .skeleton names carry no action (AXXX); items have no labels",
                          stacklevel=2)
        actions = sorted({int(m["action"]) for m in names if m is not None}) if labelled else []
        self.classes = [f"A{a:03d}" for a in actions]
        self._num_classes = len(actions)
        samples = [SkeletonSample(f.stem, actions.index(int(m["action"])) if labelled and m else None, path=f)
                   for f, m in zip(files, names)]
        if self.split == "random":
            train, val = self._random_split(len(samples))
            return {"train": [samples[i] for i in train], "val": [samples[i] for i in val]}
        key = {"xsub": "subject", "xview": "camera", "xset": "setup"}[self.split]

        def is_train(m: re.Match[str]) -> bool:
            value = int(m[key])
            return (value in XSUB_TRAIN_SUBJECTS if key == "subject" else
                    value in XVIEW_TRAIN_CAMERAS if key == "camera" else value % 2 == 0)

        out: dict[str, list[SkeletonSample]] = {"train": [], "val": []}
        for s, m in zip(samples, names):
            out["train" if is_train(m) else "val"].append(s)  # type: ignore[arg-type]
        if not out["train"]:
            raise DataError(self.root, f"the {self.split} split leaves no training sample")
        return out

    def _msr_samples(self) -> dict[str, list[SkeletonSample]]:
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist")
        files = sorted(p for p in self.root.rglob("*") if MSR_NAME.match(p.name))
        if not files:
            raise DataError(self.root, "holds no MSR Action3D files (aXX_sYY_eZZ_skeleton3D.txt)")
        names = [MSR_NAME.match(f.name) for f in files]
        actions = sorted({int(m["action"]) for m in names if m is not None})
        self.classes = [f"a{a:02d}" for a in actions]
        self._num_classes = len(actions)
        samples = [SkeletonSample(f.name.split("_skeleton3D")[0], actions.index(int(m["action"])), path=f)
                   for f, m in zip(files, names) if m is not None]
        if self.split == "random":
            train, val = self._random_split(len(samples))
            return {"train": [samples[i] for i in train], "val": [samples[i] for i in val]}
        if self.split != "xsub":
            raise ConfigError(f"MSR Action3D has the cross-subject split (xsub) or random, not {self.split!r}")
        out: dict[str, list[SkeletonSample]] = {"train": [], "val": []}
        for sample, m in zip(samples, names):
            out["train" if int(m["subject"]) in MSR_TRAIN_SUBJECTS else "val"].append(sample)  # type: ignore[index]
        if not out["train"]:
            raise DataError(self.root, "the xsub split leaves no training sample (no odd subject: 1, 3, 5, 7, 9)")
        return out

    def _resolve_topology(self, source: str) -> Topology:
        """The topology given here, else the trained model adapter's, else the source's usual one."""
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        theirs = getattr(getattr(module, "adapter", None), "topology", None)
        theirs = theirs if isinstance(theirs, Topology) else None
        if self.topology is not None:
            if theirs is not None and theirs.joints != self.topology.joints:
                raise ConfigError(f"the data's topology {self.topology.name!r} ({self.topology.num_joints} joints) "
                                  f"differs from the model adapter's {theirs.name!r} ({theirs.num_joints} joints); "
                                  "name it once, on the adapter")
            return self.topology
        if theirs is not None:
            return theirs
        return Topology.resolve("kinect20" if source == "msr" else "ntu25")

    def _validate(self, datasets: dict[str, SkeletonDataset]) -> None:
        """Read every sequence now; skip and list bad ones (`skip_invalid`) or raise on the first."""
        for name, dataset in datasets.items():
            keep = []
            for i, sample in enumerate(dataset.samples):
                try:
                    dataset.load(i)
                except DataError as err:
                    if not self.skip_invalid:
                        raise DataError(err.path, f"{err.problem} (skip_invalid: true skips bad sequences)") from err
                    self.skipped.append((sample.name, str(err.problem)))
                    continue
                keep.append(i)
            if len(keep) < len(dataset.samples):
                cached = {new: dataset._parsed[old] for new, old in enumerate(keep) if old in dataset._parsed}
                dataset.samples = [dataset.samples[i] for i in keep]
                dataset._parsed = cached
        if self.skipped:
            listed = "; ".join(f"{n}: {why}" for n, why in self.skipped[:10])
            warnings.warn(f"{self.root}: skipped {len(self.skipped)} invalid sequence(s): {listed}"
                          + (" ..." if len(self.skipped) > 10 else ""), stacklevel=2)
        if not datasets.get("train") or not datasets["train"].samples:
            raise DataError(self.root, "no valid training sequence is left")

    def _array_samples(self, source: str) -> dict[str, list[SkeletonSample]]:
        splits = read_array_file(self.root, self.topology, self.channels, self.labels)
        first = next(iter(splits.values()))
        self._num_classes = first.num_classes
        self.classes = [str(i) for i in range(first.num_classes)]

        def rows(arrays: SkeletonArrays, idx: list[int], prefix: str) -> list[SkeletonSample]:
            return [SkeletonSample(f"{self.root.name}[{prefix}{i}]",
                                   None if arrays.labels is None else int(arrays.labels[i]), array=arrays.x[i])
                    for i in idx]

        if "val" in splits:
            return {"train": rows(splits["train"], list(range(len(splits["train"].x))), "x_train "),
                    "val": rows(splits["val"], list(range(len(splits["val"].x))), "x_test ")}
        arrays = splits.get("train") or splits["all"]
        train, val = self._random_split(len(arrays.x))
        return {"train": rows(arrays, train, ""), "val": rows(arrays, val, "")}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        source = self._source()
        self.topology = self._resolve_topology(source)
        if source in ("skeleton", "msr") and self.channels != 3:
            raise ConfigError(f"{'.skeleton' if source == 'skeleton' else 'MSR Action3D'} files hold 3D joints; "
                              f"channels is {self.channels}")
        splits = (self._skeleton_samples() if source == "skeleton" else self._msr_samples() if source == "msr"
                  else self._array_samples(source))
        for name, samples in splits.items():
            train = name == "train"
            self.datasets[name] = SkeletonDataset(samples, self.topology, self.channels, self.persons, self.frames,
                                                  train=train, crop_ratio=self.crop_ratio, rotation=self.rotation,
                                                  shear=self.shear, scale=self.scale)
        self._validate(self.datasets)


class StoredSequences(Dataset):
    """Centred sequences of a `SkeletonDataset`, trimmed to their valid frames (before crop/resize)."""

    def __init__(self, source: SkeletonDataset) -> None:
        self.source = copy.copy(source)
        self.source.cache, self.source._parsed = False, {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        x, present = self.source.load(index)
        sample = self.source.samples[index]
        item: dict[str, Any] = {"sequence": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                                "person_present": torch.from_numpy(np.asarray(present, dtype=bool).copy()),
                                "name": str(sample.name)}
        if sample.label is not None:
            item["label"] = torch.tensor(sample.label, dtype=torch.long)
        return item


class _StoredSkeleton(SkeletonDataset):
    """`SkeletonDataset`'s crop-resize, rotation and shear applied to one stored sequence."""

    stored: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.stored


class FinishSkeleton:
    """A stored sequence -> the source's crop-resize to `frames`, rotation and shear."""

    def __init__(self, spec: dict[str, Any], augment: bool) -> None:
        self.helper = _StoredSkeleton([], None, spec["channels"], spec["persons"], spec["frames"],
                                      spec["train"] and augment, tuple(spec["crop_ratio"]), spec["rotation"],
                                      spec["shear"], cache=False)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        self.helper.stored = (item["sequence"].numpy(), item["person_present"].numpy())
        label = int(item["label"]) if "label" in item else None
        self.helper.samples = [SkeletonSample(item["name"], label)]
        return self.helper[0]
