"""Seeded skeleton motions from a small kinematic model, in the real NTU RGB+D formats.

A 25-joint body (NTU's Kinect v2 layout) is posed by forward kinematics from a handful of angles
(trunk lean, shoulder flexion/abduction, elbow, hip and knee flexion) plus a root translation.
Action classes: hand waving (NTU A023), jump up (A027), walking (A059-like) and squat down
(A080), with random body size, speed, amplitude, facing direction, position and joint noise;
some samples have a second, idling person, some a third static "noise body" (a chair or a
reflection, as NTU's raw files have), and some leading frames without any body.

`make_skeleton_dataset` writes `.skeleton` text files named like NTU's
(`S001C002P003R001A023.skeleton`), an NTU-style `ntu_synthetic.npz` (x_train (N, T, 150),
y_train, x_test, y_test, split cross-subject) and, with `coco17=True`, a 2D keypoint
`coco17_synthetic.npz` (x_train (N, T, M*17*2) in pixels of a 1920x1080 camera).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from maekit.domains.skeleton.readers import XSUB_TRAIN_SUBJECTS
from maekit.files import atomic_output
from maekit.domains.registry import Example, SampleOptions
from maekit.progress import progress

#: generated action -> NTU action id
ACTIONS = {"wave": 23, "jump": 27, "walk": 59, "squat": 80}
FPS = 30.0


def _limb(flex: np.ndarray | float, abd: np.ndarray | float, side: float) -> np.ndarray:
    """Unit direction of a limb hanging down, flexed forward (towards the camera, -z) by `flex`
    and abducted sideways (towards `side` x) by `abd`; works on arrays of angles."""
    flex, abd = np.asarray(flex, np.float64), np.asarray(abd, np.float64)
    return np.stack([side * np.sin(abd) * np.cos(flex), -np.cos(abd) * np.cos(flex), -np.sin(flex)], -1)


def pose_sequence(action: str, frames: int, rng: np.random.Generator, idle: bool = False) -> np.ndarray:
    """(T, 25, 3) joint positions in metres (camera space, y up, person facing the camera)."""
    t = np.arange(frames) / FPS
    speed = rng.uniform(0.75, 1.3)
    size = rng.uniform(0.85, 1.15)
    amp = rng.uniform(0.8, 1.2)
    phase = rng.uniform(0, 2 * np.pi)
    zero = np.zeros(frames)
    lean = zero.copy()
    sh_flex = {1: zero.copy(), -1: zero.copy()}
    sh_abd = {1: np.full(frames, 0.15), -1: np.full(frames, 0.15)}
    el_flex = {1: np.full(frames, 0.15), -1: np.full(frames, 0.15)}
    el_abd = {1: zero.copy(), -1: zero.copy()}
    hip_flex = {1: zero.copy(), -1: zero.copy()}
    knee = {1: zero.copy(), -1: zero.copy()}
    root = np.zeros((frames, 3))
    if idle:  # a bystander: small sway and arm drift
        root[:, 0] = 0.03 * np.sin(2 * np.pi * 0.3 * t + phase)
        sh_flex[1] = sh_flex[1] + 0.1 * np.sin(2 * np.pi * 0.2 * t + phase)
    elif action == "wave":
        sh_abd[-1] = np.full(frames, 2.5)
        el_abd[-1] = 0.45 * amp * np.sin(2 * np.pi * 1.6 * speed * t + phase)
        el_flex[-1] = np.full(frames, 0.3)
    elif action == "squat":
        p = 0.5 * (1 - np.cos(2 * np.pi * 0.5 * speed * t + phase))
        for s in (1, -1):
            hip_flex[s] = 1.6 * amp * p
            knee[s] = 2.0 * amp * p
            sh_flex[s] = 1.3 * p
        lean = 0.5 * p
        root[:, 1] = -0.4 * amp * p
    elif action == "walk":
        w = 2 * np.pi * 0.9 * speed * t + phase
        for s in (1, -1):
            hip_flex[s] = 0.45 * amp * np.sin(w + (s > 0) * np.pi)
            knee[s] = 0.7 * amp * np.clip(np.sin(w + (s > 0) * np.pi + 1.2), 0, None)
            sh_flex[s] = -0.4 * amp * np.sin(w + (s > 0) * np.pi)
        root[:, 2] = -1.1 * speed * t
        root[:, 1] = 0.02 * np.abs(np.sin(w))
    elif action == "jump":
        w = 2 * np.pi * 0.8 * speed * t + phase
        up = np.clip(np.sin(w), 0, None)
        down = np.clip(-np.sin(w), 0, None)
        root[:, 1] = 0.3 * amp * up - 0.15 * down
        for s in (1, -1):
            knee[s] = 0.9 * down
            hip_flex[s] = 0.6 * down
            sh_abd[s] = 0.15 + 2.3 * up
    else:
        raise ValueError(f"unknown action {action!r}; choose from {sorted(ACTIONS)}")
    up = np.stack([zero, np.cos(lean), -np.sin(lean)], -1)  # trunk axis, leaning forward
    x_axis = np.array([1.0, 0.0, 0.0])
    j = np.zeros((frames, 25, 3))
    base = root + np.array([0.0, 0.0, 0.0])
    j[:, 0] = base
    j[:, 1] = base + 0.25 * size * up
    j[:, 20] = base + 0.5 * size * up
    j[:, 2] = j[:, 20] + 0.07 * size * up
    j[:, 3] = j[:, 2] + 0.13 * size * up
    for s, (sh, el, wr, ha, tip, th) in {1: (4, 5, 6, 7, 21, 22), -1: (8, 9, 10, 11, 23, 24)}.items():
        j[:, sh] = j[:, 20] + s * 0.18 * size * x_axis - 0.03 * size * up
        upper = _limb(sh_flex[s], sh_abd[s], s)
        fore = _limb(sh_flex[s] + el_flex[s], sh_abd[s] + el_abd[s], s)
        j[:, el] = j[:, sh] + 0.28 * size * upper
        j[:, wr] = j[:, el] + 0.25 * size * fore
        j[:, ha] = j[:, wr] + 0.08 * size * fore
        j[:, tip] = j[:, ha] + 0.07 * size * fore
        j[:, th] = j[:, ha] + 0.04 * size * (fore + np.array([0.0, 0.0, -1.0])) / 2
    for s, (hip, kn, an, ft) in {1: (12, 13, 14, 15), -1: (16, 17, 18, 19)}.items():
        j[:, hip] = base + s * 0.09 * size * x_axis - 0.03 * size * up
        thigh = _limb(hip_flex[s], 0.03, s)
        shin = _limb(hip_flex[s] - knee[s], 0.03, s)
        j[:, kn] = j[:, hip] + 0.42 * size * thigh
        j[:, an] = j[:, kn] + 0.42 * size * shin
        j[:, ft] = j[:, an] + np.array([0.0, -0.03, -0.12]) * size
    if action == "squat" and not idle:  # the feet stay on the floor while the knees bend
        floor = j[:, [14, 18], 1].min(1)
        j[..., 1] -= (floor - floor[0])[:, None]
    yaw = rng.uniform(-0.5, 0.5)
    c, s_ = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0, s_], [0, 1, 0], [-s_, 0, c]])
    j = j @ rot.T
    j += np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.2, 0.1), rng.uniform(2.8, 3.6)])
    j += rng.normal(0, 0.008, j.shape)
    return j.astype(np.float32)


def _body_lines(body_id: int, xyz: np.ndarray) -> list[str]:
    """One body of one frame in the NTU text format (info line, joint count, 25 joint lines)."""
    lines = [f"{body_id} 0 1 1 1 1 0 0.01 0.02 2", str(len(xyz))]
    for x, y, z in xyz.astype(np.float64):
        dx, dy = 256 + 365.0 * x / z, 212 - 365.0 * y / z
        cx, cy = 960 + 1063.0 * x / z, 540 - 1063.0 * y / z
        lines.append(f"{x:.7g} {y:.7g} {z:.7g} {dx:.6g} {dy:.6g} {cx:.6g} {cy:.6g} 0 0 0 1 2")
    return lines


def write_skeleton_file(path: str | Path, bodies: list[np.ndarray], tracked: list[np.ndarray] | None = None,
                        body_ids: list[int] | None = None) -> Path:
    """Write bodies ((T, 25, 3) each; `tracked` (T,) bool each) as an NTU `.skeleton` file."""
    frames = len(bodies[0])
    tracked = tracked or [np.ones(frames, bool) for _ in bodies]
    body_ids = body_ids or [72057594037931101 + 7 * i for i in range(len(bodies))]
    lines = [str(frames)]
    for f in range(frames):
        here = [b for b in range(len(bodies)) if tracked[b][f]]
        lines.append(str(len(here)))
        for b in here:
            lines += _body_lines(body_ids[b], bodies[b][f])
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def _to_coco17(j: np.ndarray) -> np.ndarray:
    """(T, 25, 3) NTU joints -> (T, 17, 2) COCO-17 keypoints in pixels of a 1920x1080 camera."""
    head, neck = j[:, 3], j[:, 2]
    up = head - neck
    up /= np.linalg.norm(up, axis=-1, keepdims=True) + 1e-9
    side = j[:, 4] - j[:, 8]
    side /= np.linalg.norm(side, axis=-1, keepdims=True) + 1e-9
    fwd = np.cross(side, up)
    face = [head + 0.09 * fwd, head + 0.07 * fwd + 0.03 * side + 0.03 * up, head + 0.07 * fwd - 0.03 * side + 0.03 * up,
            head + 0.07 * side, head - 0.07 * side]
    body = [j[:, k] for k in (4, 8, 5, 9, 6, 10, 12, 16, 13, 17, 14, 18)]
    pts = np.stack(face + body, 1)
    z = np.where(np.abs(pts[..., 2]) > 1e-6, pts[..., 2], 1.0)  # absent persons are all zero
    u = 960 + 1063.0 * pts[..., 0] / z
    v = 540 - 1063.0 * pts[..., 1] / z
    return np.stack([u, v], -1).astype(np.float32)


def make_skeleton_dataset(out: str | Path, per_class: int = 8, frames: int = 64, second_person: float = 0.3,
                          noise_body: float = 0.2, actions: list[str] | None = None, coco17: bool = True,
                          seed: int = 0) -> Path:
    """Write a small seeded skeleton action dataset under `out` and return `out`.

    Layout: `out/skeletons/*.skeleton` (NTU names; subjects alternate between NTU's cross-subject
    training and test subjects, 3 of 4 in training), `out/ntu_synthetic.npz` (the same
    sequences, NTU-style (N, T, 150) with 2 persons, padded with zero frames to the longest, y as
    class indices) and `out/coco17_synthetic.npz` (2D keypoints) when `coco17`.

    Args:
        per_class: sequences per action.
        frames: nominal frames per sequence (each varies by +-25 %).
        second_person: probability of an idling second person.
        noise_body: probability of an extra static body (dropped by the two-most-active rule).
        actions: subset of `ACTIONS` (default all four).
    """
    if per_class < 2:
        raise ValueError(f"per_class must be at least 2 (one training and one test sequence per action), got {per_class}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = sorted(actions or ACTIONS, key=lambda a: ACTIONS[a])  # class index = NTU id order
    train_subjects = sorted(XSUB_TRAIN_SUBJECTS)[:6]
    test_subjects = [3, 6, 7]
    records: list[tuple[str, int, np.ndarray, bool]] = []
    for k, action in enumerate(progress(names, desc="actions", unit="action")):
        for i in range(per_class):
            length = int(frames * rng.uniform(0.75, 1.25))
            actor = pose_sequence(action, length, rng)
            bodies, tracked = [actor], [np.ones(length, bool)]
            lead = int(rng.integers(0, 4)) if rng.random() < 0.3 else 0
            tracked[0][:lead] = False
            has_second = rng.random() < second_person
            if has_second:
                other = pose_sequence(action, length, rng, idle=True)
                other[..., 0] += rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.2)
                bodies.append(other)
                tracked.append(np.ones(length, bool))
            if rng.random() < noise_body:  # static clutter tracked as a body for part of the clip
                clutter = np.repeat(pose_sequence(action, 1, rng, idle=True), length, 0)
                clutter += rng.normal(0, 0.001, clutter.shape).astype(np.float32)
                seen = np.zeros(length, bool)
                seen[length // 3:] = True
                bodies.append(clutter)
                tracked.append(seen)
            held_out = i % 4 == 3 or (per_class < 4 and i == per_class - 1)  # every split gets each action
            subject = test_subjects[i % len(test_subjects)] if held_out else train_subjects[i % len(train_subjects)]
            # one setup per sample of a class, so names never repeat
            name = f"S{1 + i:03d}C{1 + i % 3:03d}P{subject:03d}R{1 + i % 2:03d}A{ACTIONS[action]:03d}"
            order = rng.permutation(len(bodies))  # the actor is not always the first body in the file
            write_skeleton_file(out / "skeletons" / f"{name}.skeleton", [bodies[o] for o in order],
                                [tracked[o] for o in order])
            stacked = np.zeros((length, 2, 25, 3), np.float32)
            for m, b in enumerate(bodies[:2]):
                stacked[:, m] = np.where(tracked[m][:, None, None], b, 0.0)
            records.append((name, k, stacked[lead:], subject in XSUB_TRAIN_SUBJECTS))
    _write_npz(out / "ntu_synthetic.npz", records, lambda x: x.reshape(len(x), -1))
    if coco17:
        def to_2d(x: np.ndarray) -> np.ndarray:
            pts = np.stack([_to_coco17(x[:, m]) for m in range(x.shape[1])], 1)  # (T, M, 17, 2)
            pts *= (np.abs(x).sum((2, 3)) > 0)[:, :, None, None]
            return pts.reshape(len(x), -1)

        _write_npz(out / "coco17_synthetic.npz", records, to_2d)
    return out


def _write_npz(path: Path, records: list[tuple[str, int, np.ndarray, bool]],
               flatten: Callable[[np.ndarray], np.ndarray]) -> None:
    """NTU-style x_train/y_train/x_test/y_test, sequences padded with zero frames to the longest."""
    longest = max(len(r[2]) for r in records)
    arrays: dict[str, list[np.ndarray]] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    for _, label, x, train in records:
        flat = flatten(x)
        padded = np.zeros((longest, flat.shape[1]), np.float32)
        padded[: len(flat)] = flat
        arrays["x_train" if train else "x_test"].append(padded)
        arrays["y_train" if train else "y_test"].append(np.int64(label))
    with atomic_output(path) as tmp:
        np.savez_compressed(tmp, **{k: np.stack(v) for k, v in arrays.items()})


def make_msr_dataset(out: str | Path, actions: list[str] | None = None, subjects: tuple[int, ...] = (1, 2, 3, 4),
                     executions: int = 2, frames: int = 32, seed: int = 0) -> Path:
    """Write MSR Action3D-style `aXX_sYY_eZZ_skeleton3D.txt` files under `out`: one line per joint
    of 4 values (x y z confidence), the 20 Kinect v1 joints of a frame on 20 consecutive lines
    (NTU's first 20 joints are Kinect v1's, in the same order). Action numbers follow `ACTIONS`
    order (a01 wave, a02 jump, ...); returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = sorted(actions or ACTIONS, key=lambda a: ACTIONS[a])
    for a, action in enumerate(names, start=1):
        for subject in subjects:
            for e in range(1, executions + 1):
                joints = pose_sequence(action, int(frames * rng.uniform(0.75, 1.25)), rng)[:, :20]  # (T, 20, 3)
                confidence = np.ones((*joints.shape[:2], 1))
                rows = np.concatenate([joints, confidence], -1).reshape(-1, 4)
                text = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in rows) + "\n"
                (out / f"a{a:02d}_s{subject:02d}_e{e:02d}_skeleton3D.txt").write_text(text)
    return out


def sample_data(out: Path, preset: str, options: SampleOptions) -> Path:
    """`maekit sample-data --preset skeleton`: NTU `.skeleton` files (8 per action) and npz arrays."""
    return make_skeleton_dataset(out, 8 if options.per_class is None else options.per_class, seed=options.seed)


def example(root: Path) -> Example:
    """Conformance example: NTU `.skeleton` files, 16 frames in 4-frame segments."""
    from maekit.domains.skeleton.adapter import SkeletonAdapter
    from maekit.domains.skeleton.datamodule import SkeletonDataModule

    data = make_skeleton_dataset(root, per_class=4, frames=16, seed=0)
    return Example(SkeletonAdapter(segment=4), SkeletonDataModule(str(data / "skeletons"), frames=16, batch_size=2),
                   native=lambda adapter, batch: batch["skeleton"])
