"""Skeleton sequences: NTU RGB+D `.skeleton` files, NTU-style preprocessed arrays, 2D keypoints.

Readers:
- `read_skeleton_file`: the NTU RGB+D text format (per frame a body count; per body an info line
  of 10 values, the joint count, one line of 12 values per joint). Every body is kept, tracked
  by its bodyID across frames.
- `select_bodies`: keeps the `persons` most active bodies (largest motion energy: the sum over
  joints and axes of the variance of the position over the frames the body is tracked), drops
  frames where none of them is tracked, and returns (C=3, T, V, M) with `person_present`.
- `read_array_file`: preprocessed arrays, `.npz` with `x_train`/`y_train` (`x_test`/`y_test`)
  of shape (N, T, M*V*C) (the common `NTU60_XSub.npz`: (N, 300, 150)) or (N, C, T, V, M), labels
  as ints or one-hot; or a `.npy` of shape (N, C, T, V, M) with labels from a separate `.npy`.
  2D keypoints (COCO-17, FineGym / Diving48 style) use the same arrays with C=2 and a topology.

Every sequence is centred on the topology's centre joint (NTU: spine-middle, 1-based joint 2)
of the first person in its first frame, as the common NTU preprocessing does; frames where a
person is not tracked stay zero. Every bad input raises `DataError` naming the file.

`SkeletonDataModule` serves items {"skeleton": (C, T, V, M) float32, "person_present": (M,) bool,
"label": long} with MAMP/CTR-GCN augmentations: a random temporal crop of the valid frames resized
to T frames, random rotation and shear (the same for both persons of a sample).
"""

from __future__ import annotations

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

from maekit.datasets.resumable import ResumableLoader, training_loader
from maekit.domains.skeleton import Topology, TopologySpec
from maekit.errors import ConfigError, DataError

#: NTU file names: setup, camera, performer (subject), replication, action
NTU_NAME = re.compile(r"S(?P<setup>\d{3})C(?P<camera>\d{3})P(?P<subject>\d{3})R(?P<rep>\d{3})A(?P<action>\d{3})")
#: training subjects of the cross-subject protocol (NTU-60's 20, extended by NTU-120's)
XSUB_TRAIN_SUBJECTS = frozenset([
    1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38, 45, 46, 47, 49, 50, 52, 53, 54,
    55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103])
#: training cameras of the cross-view protocol (camera 1 is the test view)
XVIEW_TRAIN_CAMERAS = frozenset([2, 3])


# ---------------------------------------------------------------------------- .skeleton

@dataclass
class RawSkeleton:
    """Every body of one `.skeleton` file.

    Attributes:
        joints: (bodies, T, V, 3) float32 camera-space xyz in metres, zero where not tracked.
        tracked: (bodies, T) bool, whether the body is in the frame.
        body_ids: the file's bodyID of each body.
    """

    joints: np.ndarray
    tracked: np.ndarray
    body_ids: list[str]

    def activity(self) -> np.ndarray:
        """(bodies,) motion energy: sum over joints and axes of the positional variance over the
        frames a body is tracked."""
        energy = np.zeros(len(self.body_ids), np.float64)
        for b in range(len(self.body_ids)):
            frames = self.joints[b][self.tracked[b]]
            if len(frames) > 1:
                energy[b] = float(frames.var(0).sum())
        return energy


def read_skeleton_file(path: str | Path, num_joints: int = 25) -> RawSkeleton:
    """Parse an NTU RGB+D `.skeleton` file; raises `DataError` (with the line number) on
    truncation, non-numbers, a joint count other than `num_joints`, or NaN coordinates."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot be read as text: {err}") from err
    pos = 0

    def line(what: str) -> list[str]:
        nonlocal pos
        while pos < len(lines) and not lines[pos].strip():
            pos += 1
        if pos >= len(lines):
            raise DataError(path, f"is truncated: the file ends at line {len(lines)} where {what} was expected")
        pos += 1
        return lines[pos - 1].split()

    def integer(words: list[str], what: str) -> int:
        try:
            if len(words) != 1:
                raise ValueError
            return int(words[0])
        except ValueError:
            found = " ".join(words)[:60]
            raise DataError(path, f"line {pos}: expected {what} (one integer), found {found!r}") from None

    frames = integer(line("the frame count"), "the frame count")
    if frames < 0:
        raise DataError(path, f"line {pos}: negative frame count {frames}")
    bodies: dict[str, int] = {}
    per_frame: list[list[tuple[int, np.ndarray]]] = []
    for f in range(frames):
        count = integer(line(f"the body count of frame {f + 1}"), f"the body count of frame {f + 1}")
        here: list[tuple[int, np.ndarray]] = []
        for b in range(count):
            info = line(f"the info line of body {b + 1} in frame {f + 1}")
            if len(info) != 10:
                raise DataError(path, f"line {pos}: the body info line of frame {f + 1} has {len(info)} values, "
                                      "expected 10 (bodyID clipedEdges ... trackingState)")
            joints = integer(line(f"the joint count of frame {f + 1}"), f"the joint count of frame {f + 1}")
            if joints != num_joints:
                raise DataError(path, f"line {pos}: frame {f + 1} has a body with {joints} joints; the topology "
                                      f"has {num_joints}")
            xyz = np.empty((num_joints, 3), np.float32)
            for j in range(num_joints):
                words = line(f"joint {j + 1} of body {b + 1} in frame {f + 1}")
                if len(words) < 3:
                    raise DataError(path, f"line {pos}: joint {j + 1} has {len(words)} values, expected 12")
                try:
                    xyz[j] = [float(w) for w in words[:3]]
                except ValueError:
                    raise DataError(path, f"line {pos}: cannot read {' '.join(words[:3])!r} as coordinates") from None
                if not np.isfinite(xyz[j]).all():
                    raise DataError(path, f"line {pos}: NaN/inf coordinate (frame {f + 1}, body {b + 1}, "
                                          f"joint {j + 1})")
            here.append((bodies.setdefault(info[0], len(bodies)), xyz))
        per_frame.append(here)
    joints_out = np.zeros((len(bodies), frames, num_joints, 3), np.float32)
    tracked = np.zeros((len(bodies), frames), bool)
    for f, here in enumerate(per_frame):
        for b, xyz in here:
            joints_out[b, f] = xyz
            tracked[b, f] = True
    return RawSkeleton(joints_out, tracked, list(bodies))


def centre_sequence(x: np.ndarray, centre: int) -> np.ndarray:
    """(C, T, V, M) centred on joint `centre` of the first person in its first tracked frame;
    untracked (all-zero) person-frames stay zero."""
    tracked = np.abs(x).sum((0, 2)) > 0  # (T, M)
    frames = np.flatnonzero(tracked[:, 0])
    if not len(frames):
        return x
    origin = x[:, frames[0], centre, 0].copy()
    return np.where(tracked[None, :, None, :], x - origin[:, None, None, None], 0.0).astype(np.float32)


def select_bodies(raw: RawSkeleton, persons: int, centre: int, path: str | Path = "") -> tuple[np.ndarray, np.ndarray]:
    """(C=3, T, V, persons) of the most active bodies (most active first, centred) and
    `person_present` (persons,); frames where none of them is tracked are dropped."""
    if not raw.body_ids or not raw.tracked.any():
        raise DataError(path, "has no frame with a tracked body (zero valid frames)")
    order = np.argsort(-raw.activity(), kind="stable")[:persons]
    keep = raw.tracked[order].any(0)
    x = raw.joints[order][:, keep]  # (m, T, V, 3)
    out = np.zeros((3, x.shape[1], x.shape[2], persons), np.float32)
    out[..., : len(order)] = x.transpose(3, 1, 2, 0)
    present = np.zeros(persons, bool)
    present[: len(order)] = True
    return centre_sequence(out, centre), present


def load_skeleton_file(path: str | Path, topology: Topology, persons: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Read, select the `persons` most active bodies and centre: ((3, T, V, M), (M,) bool)."""
    raw = read_skeleton_file(path, topology.num_joints)
    return select_bodies(raw, persons, topology.centre_index, path)


# ------------------------------------------------------------------------------- arrays

def _labels(path: Path, y: np.ndarray, n: int, key: str) -> tuple[np.ndarray, int]:
    """Class indices from ints (N,) or one-hot (N, K), and the class count they imply."""
    y = np.asarray(y)
    if y.ndim == 2:
        if y.shape[0] != n:
            raise DataError(path, f"{key} has {y.shape[0]} rows for {n} samples")
        return y.argmax(1).astype(np.int64), y.shape[1]
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(path, f"{key} has shape {y.shape}; expected ({n},) class indices or ({n}, K) one-hot")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise DataError(path, f"{key} holds non-integer labels")
    if len(y) and y.min() < 0:
        raise DataError(path, f"{key} holds negative labels")
    y = y.astype(np.int64)
    return y, int(y.max()) + 1 if len(y) else 0


def _as_ctvm(path: Path, x: np.ndarray, key: str, joints: int, channels: int) -> np.ndarray:
    """(N, T, M*V*C) or (N, C, T, V, M) -> (N, C, T, V, M) float32."""
    x = np.asarray(x)
    if x.ndim == 3:
        n, t, width = x.shape
        if width % (joints * channels):
            raise DataError(path, f"{key} has {width} values per frame; expected persons x {joints} joints x "
                                  f"{channels} coordinates")
        m = width // (joints * channels)
        x = x.reshape(n, t, m, joints, channels).transpose(0, 4, 1, 3, 2)
    elif x.ndim == 5:
        if x.shape[1] != channels or x.shape[3] != joints:
            raise DataError(path, f"{key} has shape {x.shape}; expected (N, C={channels}, T, V={joints}, M)")
    else:
        raise DataError(path, f"{key} has shape {x.shape}; expected (N, T, M*V*C) or (N, C, T, V, M)")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        sample = int(np.argwhere(bad.reshape(len(x), -1).any(1))[0, 0])
        raise DataError(path, f"{key} holds {int(bad.sum())} NaN/inf coordinates (first in sample {sample})")
    return x


@dataclass
class SkeletonArrays:
    """Sequences of one split: x (N, C, T, V, M) float32, labels (N,) int64 or None."""

    x: np.ndarray
    labels: np.ndarray | None
    num_classes: int


def read_array_file(path: str | Path, topology: Topology, channels: int = 3,
                    labels: str | Path | None = None) -> dict[str, SkeletonArrays]:
    """The splits of a preprocessed `.npz` ('train', and 'val' from `x_test`/`x_val` when there)
    or of a `.npy` (one split 'all', labels from the `labels` `.npy`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "does not exist")
    v = topology.num_joints
    try:
        if path.suffix == ".npy":
            x = _as_ctvm(path, np.load(path, mmap_mode="r", allow_pickle=False), "the array", v, channels)
            y, k = None, 0
            if labels is not None:
                lpath = Path(labels)
                if not lpath.is_file():
                    raise DataError(lpath, "label file does not exist")
                y, k = _labels(lpath, np.load(lpath, allow_pickle=False), len(x), "the labels")
            return {"all": SkeletonArrays(x, y, k)}
        with np.load(path, allow_pickle=False) as data:
            if "x_train" not in data:
                raise DataError(path, f"has no 'x_train' array (keys: {sorted(data.files)}); expected the NTU-style "
                                      "x_train / y_train / x_test / y_test")
            out: dict[str, SkeletonArrays] = {}
            for split, (xk, yk) in {"train": ("x_train", "y_train"), "val": ("x_test", "y_test")}.items():
                if split == "val" and xk not in data:
                    xk, yk = "x_val", "y_val"
                    if xk not in data:
                        continue
                x = _as_ctvm(path, data[xk], xk, v, channels)
                y, k = _labels(path, data[yk], len(x), yk) if yk in data else (None, 0)
                out[split] = SkeletonArrays(x, y, k)
    except (OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(path, f"cannot be read as a NumPy array file: {err}") from err
    classes = max(s.num_classes for s in out.values())
    for s in out.values():
        s.num_classes = classes
    return out


# ---------------------------------------------------------------------------- transforms

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
        if sample.path is not None:
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


# --------------------------------------------------------------------------- datamodule

Source = Literal["auto", "skeleton", "npz", "npy"]
Split = Literal["xsub", "xview", "xset", "random"]


class SkeletonDataModule(L.LightningDataModule):
    """Skeleton action sequences from NTU `.skeleton` files or preprocessed arrays.

    Args:
        root: a folder of `.skeleton` files (searched recursively), an `.npz` (NTU-style
            `x_train`/`y_train`/`x_test`/`y_test`) or an `.npy` of (N, C, T, V, M).
        source: 'auto' decides from `root`.
        topology: skeleton layout: 'ntu25', 'coco17' or a mapping (joints, edges/parents, parts,
            centre); must match the model adapter's.
        channels: coordinates per joint (3 xyz, 2 image keypoints).
        persons: person slots M (NTU: 2, the two most active bodies).
        frames: T, the length every sequence is cropped and resized to (MAMP: 120).
        split: for `.skeleton` folders, 'xsub' (NTU cross-subject), 'xview' (cameras 2, 3 train),
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
        batch_size, num_workers, seed: loader settings.

    Labels of `.skeleton` files come from the action in their name (`A023` -> the index of 23
    among the actions found, sorted; `classes` lists them); `num_classes` is their count (an
    `.npz` gives its own: the one-hot width or the largest label + 1).
    """

    def __init__(self, root: str, source: Source = "auto", topology: TopologySpec = "ntu25", channels: int = 3,
                 persons: int = 2, frames: int = 120, split: Split = "xsub", val_fraction: float = 0.2,
                 labels: str | None = None, exclude: str | None = None,
                 crop_ratio: tuple[float, float] = (0.5, 1.0), rotation: float = 0.0, shear: float = 0.0,
                 scale: bool = False, batch_size: int = 32, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.root, self.source = Path(root), source
        self.topology = Topology.resolve(topology)
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
            return "skeleton"
        if self.root.suffix in (".npz", ".npy"):
            return self.root.suffix[1:]  # type: ignore[return-value]
        raise DataError(self.root, "is neither a folder of .skeleton files nor an .npz/.npy file")

    def _random_split(self, n: int) -> tuple[list[int], list[int]]:
        order = list(range(n))
        random.Random(self.seed).shuffle(order)
        n_val = int(round(self.val_fraction * n))
        if 0 < self.val_fraction < 1 and n > 1:
            n_val = min(max(n_val, 1), n - 1)
        return order[n_val:], order[:n_val]

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
        if source == "skeleton" and self.channels != 3:
            raise ConfigError(f".skeleton files hold 3D joints; channels is {self.channels}")
        splits = self._skeleton_samples() if source == "skeleton" else self._array_samples(source)
        for name, samples in splits.items():
            train = name == "train"
            self.datasets[name] = SkeletonDataset(samples, self.topology, self.channels, self.persons, self.frames,
                                                  train=train, crop_ratio=self.crop_ratio, rotation=self.rotation,
                                                  shear=self.shear, scale=self.scale)

    def train_dataloader(self) -> ResumableLoader:
        train = self.datasets["train"]
        return training_loader(self, train, self.batch_size, self.num_workers, drop_last=len(train) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["val"], batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
