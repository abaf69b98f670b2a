"""Per-point embeddings of a whole point-cloud scene (e.g. a lidar tile) with a pretrained
point encoder, chunk by chunk, with memory bounded by the chunk.

The scene is cut into overlapping square chunks of a grid in the ground plane (`chunk_size`
wide, `overlap` shared with each neighbour). Each chunk is resampled to the `points_per_chunk`
the encoder was trained with, normalised to the unit sphere as in training, and encoded into
group tokens (FPS centres + kNN neighbourhoods); every point of the chunk (not only the sampled
ones) takes the features of its nearest group centre. Points in several chunks average them.
The result, one feature vector per input point in input order, is what a practitioner clusters
or probes (ground / vegetation / building separation without labels); `components` projects it
onto its leading principal components to keep files small.

Written as a binary PLY: `x, y, z` (double: georeferenced coordinates stay exact), the features `f000...` (float32) and `chunks` (how many
chunks saw the point). The model only ever sees one batch of chunks; the output array itself
has one row per point.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maekit.errors import ConfigError, DataError
from maekit.files import atomic_output
from maekit.progress import progress
from maekit.tokens import NamedChannels, PointGroups


@dataclass
class Chunk:
    """One ground-plane cell: its (row, col) in the grid, its lower corner and the point indexes."""

    cell: tuple[int, int]
    origin: tuple[float, float]
    index: np.ndarray


def chunk_grid(xyz: np.ndarray, chunk_size: float, overlap: float = 0.0, axes: tuple[int, int] = (0, 1)) -> list[Chunk]:
    """Square chunks of `chunk_size` at a stride of `chunk_size - overlap` over the `axes` plane
    (x, y for lidar; use (0, 2) for y-up scans). Every point lies in at least one chunk (more in
    the overlaps); empty cells are left out. Works per point, never per cell x point."""
    if chunk_size <= 0 or not 0 <= overlap < chunk_size:
        raise ConfigError(f"chunk_size ({chunk_size}) must be positive and overlap ({overlap}) in [0, chunk_size)")
    stride = chunk_size - overlap
    plane = xyz[:, list(axes)].astype(np.float64)
    low = plane.min(0)
    rel = plane - low
    extent = rel.max(0)
    cells = [max(1, math.ceil((e - chunk_size) / stride + 1e-9) + 1) for e in extent]
    reach = math.ceil(chunk_size / stride) + 1  # how many cells back along an axis can still hold a point
    base = np.floor(rel / stride).astype(np.int64)
    members: list[np.ndarray] = []
    for a in range(reach):
        for b in range(reach):
            cell = base - np.array([a, b])
            inside = ((cell >= 0).all(1) & (cell[:, 0] < cells[0]) & (cell[:, 1] < cells[1])
                      & (rel < cell * stride + chunk_size).all(1))
            idx = np.nonzero(inside)[0]
            members.append(np.stack([cell[idx, 0] * cells[1] + cell[idx, 1], idx], 1))
    pairs = np.concatenate(members)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    ids, starts = np.unique(pairs[:, 0], return_index=True)
    out = []
    for cid, part in zip(ids, np.split(pairs[:, 1], starts[1:])):
        row, col = divmod(int(cid), cells[1])
        out.append(Chunk((row, col), (float(low[0] + row * stride), float(low[1] + col * stride)), part))
    return out


@torch.no_grad()
def embed_point_scene(
    encoder: Any,
    xyz: np.ndarray,
    channels: np.ndarray | None = None,
    chunk_size: float = 20.0,
    overlap: float = 5.0,
    points_per_chunk: int = 2048,
    batch_size: int = 8,
    axes: tuple[int, int] = (0, 1),
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) per-point features and (N,) chunk counts of a scene, in input point order.

    Args:
        encoder: a `PretrainedEncoder` of a point-cloud model (`maekit.weights.from_pretrained`):
            `encoder(batch) -> (features (B, G, D), tokens)` with group centres in `tokens.coords`.
        xyz: (N, 3) coordinates in the scene's units; channels: (N, C) extra per-point values the
            model takes (its `channels`), or None.
        chunk_size, overlap: the ground-plane grid, in the scene's units.
        points_per_chunk: points handed to the encoder per chunk (sampled without replacement,
            or repeated when a chunk has fewer).
        batch_size: chunks per encoder call.
    """
    rng = np.random.default_rng(seed)
    chunks = chunk_grid(xyz, chunk_size, overlap, axes)
    width = None
    features: np.ndarray | None = None
    counts = np.zeros(len(xyz), dtype=np.int32)
    bar = progress(total=len(chunks), desc="chunks", unit="chunk")
    for start in range(0, len(chunks), batch_size):
        group = chunks[start:start + batch_size]
        inputs, normalised = [], []
        for chunk in group:
            pts = xyz[chunk.index].astype(np.float64)  # centred in float64: georeferenced metres keep their cm
            take = rng.choice(len(pts), points_per_chunk, replace=len(pts) < points_per_chunk)
            centre = pts[take].mean(0)
            radius = float(np.sqrt(((pts[take] - centre) ** 2).sum(1)).max()) or 1.0
            norm = ((pts - centre) / radius).astype(np.float32)
            sample = norm[take]
            if channels is not None:
                sample = np.concatenate([sample, channels[chunk.index][take].astype(np.float32)], 1)
            inputs.append(sample)
            normalised.append(norm)
        batch = {"points": torch.from_numpy(np.stack(inputs)).to(device)}
        x, tokens = encoder(batch)
        x, centres = x[:, -tokens.coords.shape[1]:].float(), tokens.coords.float()  # drop a class token
        if features is None:
            width = x.shape[-1]
            features = np.zeros((len(xyz), width), dtype=np.float32)
        for i, chunk in enumerate(group):
            pts = torch.from_numpy(normalised[i]).to(device)
            nearest = torch.cdist(pts, centres[i]).argmin(1)
            features[chunk.index] += x[i, nearest].cpu().numpy()
            counts[chunk.index] += 1
        bar.update(len(group))
    bar.close()
    if features is None or (counts == 0).any():
        raise DataError("<scene>", f"{int((counts == 0).sum())} points fell in no chunk")  # a bug, not bad data
    features /= counts[:, None]
    return features, counts


def principal_components(features: np.ndarray, k: int, sample: int = 100_000, seed: int = 0) -> np.ndarray:
    """Project (N, D) features onto their `k` leading principal components (fitted on a sample)."""
    rng = np.random.default_rng(seed)
    fit = features[rng.choice(len(features), min(sample, len(features)), replace=False)]
    mean = fit.mean(0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    return ((features - mean) @ vt[:k].T).astype(np.float32)


def write_ply(path: str | Path, xyz: np.ndarray, fields: dict[str, np.ndarray]) -> Path:
    """Write a binary little-endian PLY of points with named per-point scalar fields, atomically."""
    path = Path(path)
    columns = [("x", xyz[:, 0].astype(np.float64)), ("y", xyz[:, 1].astype(np.float64)),
               ("z", xyz[:, 2].astype(np.float64))] + [(n, np.asarray(v)) for n, v in fields.items()]
    kinds = {np.dtype("float32"): "float", np.dtype("float64"): "double", np.dtype("int32"): "int",
             np.dtype("uint8"): "uchar", np.dtype("int16"): "short", np.dtype("uint16"): "ushort"}
    table = np.empty(len(xyz), dtype=[(n, v.dtype.newbyteorder("<")) for n, v in columns])
    for name, values in columns:
        if values.dtype not in kinds:
            raise ConfigError(f"PLY field {name!r} has dtype {values.dtype}, not one PLY stores")
        table[name] = values
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(xyz)}"]
    header += [f"property {kinds[v.dtype]} {n}" for n, v in columns] + ["end_header"]
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(table.tobytes())
    return path


def read_ply_table(path: str | Path) -> dict[str, np.ndarray]:
    """Every per-vertex field of a binary little-endian PLY written by `write_ply`, by name."""
    types = {"float": "<f4", "double": "<f8", "int": "<i4", "uchar": "u1", "short": "<i2", "ushort": "<u2"}
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise DataError(path, "is not a PLY file")
    lines = raw[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise DataError(path, "is not a binary little-endian PLY")
    count = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    fields = [(line.split()[2], types[line.split()[1]]) for line in lines if line.startswith("property")]
    table = np.frombuffer(raw, dtype=np.dtype(fields), count=count, offset=end + len(b"end_header\n"))
    return {name: table[name].copy() for name, _ in fields}


def cmd_embed_points(argv: list[str]) -> int:
    """Per-point embeddings of a large point-cloud scene with a pretrained point encoder, in
    overlapping ground-plane chunks, written as a PLY with one scalar field per feature."""
    from maekit.domains.pointcloud.readers import read_points
    from maekit.weights.hub import from_pretrained

    p = argparse.ArgumentParser(prog="maekit embed-points", description=cmd_embed_points.__doc__)
    p.add_argument("weights", help="a point-cloud checkpoint / exported folder / registry name")
    p.add_argument("scene", help="the scene (PLY/PCD/LAS/LAZ/.bin/.npy/...)")
    p.add_argument("out", help="output .ply")
    p.add_argument("--chunk-size", type=float, default=20.0, help="chunk edge in the scene's units")
    p.add_argument("--overlap", type=float, default=5.0, help="overlap of neighbouring chunks")
    p.add_argument("--points-per-chunk", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8, help="chunks per encoder call")
    p.add_argument("--up", choices=["z", "y"], default="z", help="up axis (lidar z; many scans y)")
    p.add_argument("--components", type=int, default=None, help="keep this many principal components")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    encoder = from_pretrained(a.weights).to(device)
    if not isinstance(encoder.adapter, PointGroups):
        raise ConfigError(f"{a.weights} is not a point-cloud model")
    names: Sequence[str] = list(encoder.adapter.channels) if isinstance(encoder.adapter, NamedChannels) else []
    cloud = read_points(a.scene)
    missing = [c for c in names if c not in cloud.channels]
    if missing:
        raise DataError(a.scene, f"has no {', '.join(missing)} channel(s), which the model takes")
    channels = np.stack([cloud.channels[c] for c in names], 1) if names else None
    features, counts = embed_point_scene(encoder, cloud.xyz, channels, a.chunk_size, a.overlap, a.points_per_chunk,
                                         a.batch_size, (0, 1) if a.up == "z" else (0, 2), device)
    if a.components:
        features = principal_components(features, a.components)
    fields = {f"f{i:03d}": features[:, i] for i in range(features.shape[1])}
    fields["chunks"] = counts.astype(np.uint8 if counts.max() < 256 else np.int32)
    write_ply(a.out, cloud.xyz, fields)
    print(f"{a.scene}: {len(cloud.xyz)} points, {features.shape[1]} features per point -> {a.out}")
    return 0
