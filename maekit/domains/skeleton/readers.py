"""Skeleton sequences: NTU RGB+D `.skeleton` files, NTU-style preprocessed arrays, 2D keypoints.

Readers:
- `read_skeleton_file`: the NTU RGB+D text format (per frame a body count; per body an info line
  of 10 values, the joint count, one line of 12 values per joint). Every body is kept, tracked
  by its bodyID across frames.
- `select_bodies`: keeps the `persons` most active bodies (largest motion energy: the sum over
  joints and axes of the variance of the position over the frames the body is tracked), drops
  frames where none of them is tracked, and returns (C=3, T, V, M) with `person_present`.
- `read_msr_file`: MSR Action3D's `aXX_sYY_eZZ_skeleton3D.txt` (one line per joint of 4 values,
  x y z confidence, the 20 Kinect v1 joints of a frame on 20 consecutive lines; one person).
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

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maekit.domains.skeleton.spec import Topology
from maekit.errors import DataError

#: NTU file names: setup, camera, performer (subject), replication, action
NTU_NAME = re.compile(r"S(?P<setup>\d{3})C(?P<camera>\d{3})P(?P<subject>\d{3})R(?P<rep>\d{3})A(?P<action>\d{3})")
#: training subjects of the cross-subject protocol (NTU-60's 20, extended by NTU-120's)
XSUB_TRAIN_SUBJECTS = frozenset([
    1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38, 45, 46, 47, 49, 50, 52, 53, 54,
    55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103])
#: MSR Action3D file names: action, subject, execution
MSR_NAME = re.compile(r"^a(?P<action>\d+)_s(?P<subject>\d+)_e(?P<rep>\d+)_skeleton3D\.txt$", re.I)
#: MSR Action3D cross-subject protocol: odd subjects train, even subjects test
MSR_TRAIN_SUBJECTS = frozenset([1, 3, 5, 7, 9])
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


# --------------------------------------------------------------------------- MSR text

def read_msr_file(path: str | Path, num_joints: int = 20) -> np.ndarray:
    """Parse an MSR Action3D `skeleton3D.txt` into (3, T, V, 1) float32 (the confidence column
    is dropped). Refused, naming the file and line: a line without exactly 4 numbers, a line
    count that is not a whole number of frames, NaN/inf values, no frame, and a sequence whose
    coordinates are all zero (no skeleton was tracked)."""
    path = Path(path)
    try:
        lines = [ln.split() for ln in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot be read as text: {err}") from err
    while lines and not lines[-1]:
        lines.pop()
    values = np.empty((len(lines), 4), np.float32)
    for i, words in enumerate(lines):
        if len(words) != 4:
            raise DataError(path, f"line {i + 1} has {len(words)} values; expected 4 (x y z confidence)")
        try:
            values[i] = [float(w) for w in words]
        except ValueError:
            raise DataError(path, f"line {i + 1}: cannot read {' '.join(words)!r} as numbers") from None
    if not len(values):
        raise DataError(path, "holds no frame")
    if len(values) % num_joints:
        raise DataError(path, f"has {len(values)} joint lines, not a whole number of frames of {num_joints} joints")
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(path, f"line {int(np.argwhere(bad.any(1))[0, 0]) + 1}: NaN/inf value")
    xyz = values[:, :3].reshape(-1, num_joints, 3)  # (T, V, 3)
    if not np.abs(xyz).any():
        raise DataError(path, f"every coordinate of its {len(xyz)} frames is 0 (no skeleton tracked)")
    return np.ascontiguousarray(xyz.transpose(2, 0, 1)[..., None])


def load_msr_file(path: str | Path, topology: Topology, persons: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Read an MSR Action3D file, keep its tracked frames and centre: ((3, T, V, M), (M,) bool)."""
    x = read_msr_file(path, topology.num_joints)
    tracked = np.abs(x).sum((0, 2, 3)) > 0
    x = x[:, tracked]
    out = np.zeros((*x.shape[:3], persons), np.float32)
    out[..., :1] = x
    present = np.zeros(persons, bool)
    present[0] = True
    return centre_sequence(out, topology.centre_index), present


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
