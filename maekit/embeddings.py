"""`maekit embed CKPT ROOT_OR_SCENE --out embeddings.parquet`: encoder embeddings as a table.

One row per sample, with the embedding as a fixed-size `list<float32>` column (`embedding`,
the encoder's width) pooled over the tokens (`mean` over present tokens by default; `max`, or
`cls` for encoders with a class token) and the sample's source file:

- multispectral: a folder of chips (every file the chip reader reads: GeoTIFF, .npy/.npz,
  JPEG/PNG) gives a row per chip; one raster scene gives a row per tile of the window grid
  `predict-scene` uses (`--tile`, `--stride`; the last tile of a row or column flush with the
  edge). Rows carry the pixel window (`row_off`, `col_off`, `height`, `width`) and, for
  georeferenced rasters, the window's footprint polygon in the raster's CRS: the file is then
  GeoParquet (geopandas), which a GIS opens directly. Tiles and chips without any valid pixel
  are skipped (and counted).
- volumes: a row per case (`source`, `case`), plain Parquet.
- point clouds: a row per cloud file (`source`), plain Parquet.

This is a kit command rather than a domain's: it spans domains (the checkpoint says which one)
and writes one table format for all of them. The file is written atomically.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from maekit.errors import ConfigError, DataError
from maekit.files import atomic_output
from maekit.lazy import lazy_import
from maekit.progress import progress

Pooling = Literal["mean", "max", "cls"]

__all__ = ["EmbeddingTable", "cmd_embed", "embed", "pool_features", "tile_windows"]


@dataclass
class EmbeddingTable:
    """What `embed` wrote: the file, its row count, the embedding width and skipped samples."""

    path: Path
    rows: int
    width: int
    skipped: int
    geometry: bool


def pool_features(features: Tensor, present: Tensor | None, prefix: int, pooling: Pooling) -> Tensor:
    """(B, D) from (B, prefix + N, D) encoder outputs: the mean or max over present patch
    tokens, or the class token's output (`cls`)."""
    if pooling == "cls":
        if prefix == 0:
            raise ConfigError("pooling 'cls' needs an encoder with a class token; this one has none (use mean)")
        return features[:, 0]
    x = features[:, prefix:]
    keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if present is None else present
    if pooling == "max":
        return x.masked_fill(~keep[..., None], float("-inf")).amax(1)
    if pooling != "mean":
        raise ConfigError(f"pooling must be mean, max or cls, got {pooling!r}")
    w = keep[..., None].to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


@torch.no_grad()
def _encode(model: nn.Module, batch: dict[str, Tensor], pooling: Pooling) -> tuple[np.ndarray, np.ndarray]:
    """(B, D) pooled float32 embeddings and (B,) bool: whether the sample had any present token."""
    x, tokens = model(batch, return_prefix=True)
    present = tokens.present if tokens.may_be_absent else None
    pooled = pool_features(x.float(), present, model.encoder.num_prefix, pooling)
    has = tokens.present.any(1) if present is not None else torch.ones(len(pooled), dtype=torch.bool)
    return pooled.cpu().numpy().astype(np.float32), has.cpu().numpy()


# ------------------------------------------------------------------------------ rasters
def tile_windows(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """(row_off, col_off) of every tile of a scene: `predict-scene`'s grid (`tile_starts` on
    both axes)."""
    from maekit.domains.multispectral.scenes import tile_starts

    return [(r, c) for r in tile_starts(height, tile, stride) for c in tile_starts(width, tile, stride)]


def _footprint(transform: Any, row: int, col: int, height: int, width: int) -> Any:
    """The window's polygon in the raster's CRS (its four corners through the affine transform)."""
    from shapely.geometry import Polygon

    corners = [(col, row), (col + width, row), (col + width, row + height), (col, row + height)]
    return Polygon([transform * c for c in corners])


def _band_names(path: Path, count: int, described: list[str] | None, model_bands: list[str],
                file_bands: Sequence[str] | None) -> list[str]:
    if file_bands is not None:
        if len(file_bands) != count:
            raise DataError(path, f"has {count} bands but --file-bands names {len(file_bands)}")
        return list(file_bands)
    if described and set(described) & set(model_bands):
        return described
    if count == len(model_bands):
        return list(model_bands)
    raise DataError(path, f"has {count} bands and the model {len(model_bands)} ({model_bands}); name the file's "
                          "bands with --file-bands")


def _raster_meta(path: Path) -> tuple[int, list[str] | None, Any, Any]:
    """(band count, band descriptions or None, CRS or None, transform or None) of a chip file."""
    from maekit.domains.multispectral.readers import ARRAY_SUFFIXES, PICTURE_SUFFIXES, _npz_bands

    suffix = path.suffix.lower()
    if suffix in PICTURE_SUFFIXES or suffix in ARRAY_SUFFIXES:
        if suffix == ".npz":
            return _npz_bands(path), None, None, None
        if suffix == ".npy":
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0]), None, None, None
        return _picture_bands(path), None, None, None
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            names = list(src.descriptions or [])
            described = [str(n) for n in names] if len(names) == src.count and all(names) else None
            georeferenced = src.crs is not None
            return src.count, described, src.crs if georeferenced else None, src.transform if georeferenced else None
    except RasterioError as err:
        raise DataError(path, f"cannot be opened as a raster: {err}") from err


def _picture_bands(path: Path) -> int:
    from maekit.domains.multispectral.readers import _PICTURE_MODES, _open_picture

    with _open_picture(path) as picture:
        if picture.mode == "P":
            return 4 if "transparency" in picture.info else 3
        if picture.mode not in _PICTURE_MODES:
            raise DataError(path, f"has Pillow mode {picture.mode!r}; read are {sorted(_PICTURE_MODES)} and palette")
        return _PICTURE_MODES[picture.mode]


def _chip_files(root: Path) -> list[Path]:
    from maekit.domains.multispectral.readers import ARRAY_SUFFIXES, PICTURE_SUFFIXES, RASTER_SUFFIXES

    suffixes = RASTER_SUFFIXES + ARRAY_SUFFIXES + PICTURE_SUFFIXES
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(root, f"holds no chip files ({', '.join(suffixes)}){_other_domain(root, 'multispectral')}")
    return files


#: file endings that give away another domain's data
_DOMAIN_FILES = {"volume": (".nii", ".nii.gz", ".dcm"), "point cloud": (".ply", ".pcd", ".las", ".laz", ".off"),
                 "multispectral": (".tif", ".tiff", ".npz", ".jpg", ".jpeg", ".png")}


def _other_domain(root: Path, model: str) -> str:
    """', but it holds X files: the checkpoint is a `model` model' when `root` holds another
    domain's files, else ''."""
    names = [p.name.lower() for p in root.rglob("*") if p.is_file()] if root.is_dir() else [root.name.lower()]
    for domain, endings in _DOMAIN_FILES.items():
        if domain != model and any(n.endswith(endings) for n in names):
            return f"; it holds {domain} data, but the checkpoint is a {model} model"
    return " (the folder is empty)" if not names else ""


def _pad_to(image: Tensor, valid: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Pad (C, H, W) / (H, W) up to a multiple of the patch size; padding is invalid (absent)."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return image, valid
    return (nn.functional.pad(image, (0, pw, 0, ph)),
            nn.functional.pad(valid.to(torch.uint8), (0, pw, 0, ph)).bool())


def _raster_rows(model: nn.Module, source: Path, tile: int | None, stride: int | None, pooling: Pooling,
                 batch_size: int, device: str, file_bands: Sequence[str] | None, nodata: float | None
                 ) -> tuple[list[dict[str, Any]], list[np.ndarray], Any, int]:
    """Rows (without embeddings), embeddings, the CRS (None: not georeferenced) and skips."""
    from rasterio.windows import Window

    from maekit.domains.multispectral.readers import read_chip, read_raster

    adapter = model.adapter
    patch = int(adapter.patch_size)
    model_bands = list(adapter.channels)
    rows: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    skipped = 0
    pending: list[tuple[dict[str, Any], Tensor, Tensor]] = []

    def flush() -> None:
        nonlocal skipped
        while pending:
            shape = pending[0][1].shape
            take = [p for p in pending[:batch_size] if p[1].shape == shape]
            del pending[:len(take)]
            batch = {"image": torch.stack([t[1] for t in take]).to(device),
                     "valid": torch.stack([t[2] for t in take]).to(device)}
            embedded, has = _encode(model, batch, pooling)
            for (row, _, _), vector, ok in zip(take, embedded, has):
                if ok:
                    rows.append(row)
                    vectors.append(vector)
                else:
                    skipped += 1

    def use_bands(path: Path, names: list[str]) -> None:
        wanted = [b for b in names if b in model_bands]
        if not wanted:
            raise DataError(path, f"has none of the model's bands {model_bands} (its bands: {names}); name them "
                                  "with --file-bands")
        if wanted != adapter.input_channels:
            flush()
            adapter.set_input_channels(wanted)

    if source.is_dir():
        crs_seen: dict[str, Any] = {}
        for path in progress(_chip_files(source), desc="embed chips", unit="chip"):
            count, described, crs, transform = _raster_meta(path)
            names = _band_names(path, count, described, model_bands, file_bands)
            use_bands(path, names)
            try:
                chip = read_chip(path, names, adapter.input_channels, nodata)
            except DataError as err:
                if "no valid pixel" not in str(err):
                    raise
                skipped += 1
                continue
            height, width = chip.image.shape[1:]
            crs_seen[str(crs) if crs is not None else ""] = crs
            row = {"source": str(path), "row_off": 0, "col_off": 0, "height": int(height), "width": int(width),
                   "geometry": _footprint(transform, 0, 0, height, width) if transform is not None else None}
            image, valid = _pad_to(torch.from_numpy(chip.image), torch.from_numpy(chip.valid), patch)
            pending.append((row, image, valid))
            if len(pending) >= batch_size:
                flush()
        flush()
        if len(crs_seen) > 1:
            kinds = sorted(k or "none" for k in crs_seen)
            raise DataError(source, f"holds chips in different coordinate systems ({', '.join(kinds)}); embed each "
                                    "CRS (or the georeferenced and plain chips) separately")
        crs = next(iter(crs_seen.values())) if crs_seen else None
        return rows, vectors, crs, skipped
    import rasterio
    from rasterio.errors import RasterioError

    tile = tile if tile is not None else max(patch, 256 // patch * patch)
    stride = stride if stride is not None else tile
    if tile < 1 or tile % patch:
        raise ConfigError(f"tile {tile} must be a positive multiple of the model's patch size {patch}")
    if stride < 1:
        raise ConfigError(f"stride {stride} must be positive")
    try:
        src = rasterio.open(source)
    except RasterioError as err:
        raise DataError(source, f"cannot be opened as a raster: {err}") from err
    with src:
        if src.height < tile or src.width < tile:
            raise DataError(source, f"is {src.height}x{src.width} pixels, smaller than one {tile}x{tile} tile; give a "
                                    "smaller --tile (a multiple of the patch size) or embed it as a chip folder")
        names = list(src.descriptions or [])
        described = [str(n) for n in names] if len(names) == src.count and all(names) else None
        names = _band_names(source, src.count, described, model_bands, file_bands)
        use_bands(source, names)
        crs = src.crs
        transform = src.transform if crs is not None else None
        windows = tile_windows(src.height, src.width, tile, stride)
        by_row: dict[int, list[int]] = {}
        for r, c in windows:
            by_row.setdefault(r, []).append(c)
        # one strip of tile rows at a time, as predict-scene reads
        for top, cols in progress(by_row.items(), total=len(by_row), desc="embed tile rows", unit="row"):
            strip = read_raster(source, names, adapter.input_channels, Window(0, top, src.width, tile), nodata,
                                dataset=src)
            image, valid = torch.from_numpy(strip.image), torch.from_numpy(strip.valid)
            for left in cols:
                v = valid[:, left:left + tile]
                if not v.any():
                    skipped += 1
                    continue
                row = {"source": str(source), "row_off": top, "col_off": left, "height": tile, "width": tile,
                       "geometry": _footprint(transform, top, left, tile, tile) if transform is not None else None}
                pending.append((row, image[:, :, left:left + tile].contiguous(), v.contiguous()))
                if len(pending) >= batch_size:
                    flush()
        flush()
    return rows, vectors, crs, skipped


# ------------------------------------------------------------------------------ volumes
def _volume_rows(model: nn.Module, root: Path, pooling: Pooling, device: str, kind: str | None,
                 pixdim: Sequence[float] | None) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    from maekit.domains.volume.readers import find_cases, load_case

    adapter = model.adapter
    modalities = list(adapter.channels)
    try:
        cases = find_cases(root, modalities=modalities if len(modalities) > 1 else None)
    except DataError as err:
        hint = _other_domain(root, "volume")
        if hint.startswith("; it holds"):
            raise DataError(root, f"{err.problem}{hint}") from err
        raise
    if not cases:
        raise DataError(root, "holds no volume cases (NIfTI files / DICOM series in a layout the reader knows)"
                              + _other_domain(root, "volume"))
    kind = kind or ("ct" if modalities == ["ct"] else "mri")
    patch = int(adapter.patch_size)
    adapter.set_input_channels(modalities)
    for case in progress(cases, desc="embed cases", unit="case"):
        item = load_case(case, modalities, kind, pixdim)  # type: ignore[arg-type]
        image = item["image"]
        pads = [v for s in reversed(image.shape[1:]) for v in (0, (-s) % patch)]
        batch = {"image": nn.functional.pad(image, pads)[None].to(device),
                 "modality_present": item["modality_present"][None].to(device)}
        embedded, has = _encode(model, batch, pooling)
        yield {"source": item["source"], "case": case.name}, (embedded[0] if has[0] else None)


# --------------------------------------------------------------------------- point clouds
def _cloud_rows(model: nn.Module, root: Path, pooling: Pooling, device: str, points: int, seed: int
                ) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    from maekit.domains.pointcloud.readers import POINT_SUFFIXES, normalise_unit_sphere, read_points

    suffixes = tuple(POINT_SUFFIXES)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                 and p.suffix.lower() in suffixes)
    if not files:
        raise DataError(root, f"holds no point cloud files ({', '.join(suffixes)}){_other_domain(root, 'point cloud')}")
    adapter = model.adapter
    channels = list(getattr(adapter, "channels", []) or [])
    rng = np.random.default_rng(seed)
    for path in progress(files, desc="embed clouds", unit="cloud"):
        cloud = read_points(path)
        missing = [c for c in channels if c not in cloud.channels]
        if missing:
            raise DataError(path, f"lacks the channels {missing} the model takes")
        xyz = normalise_unit_sphere(cloud.xyz).astype(np.float32)  # the whole cloud, as the datamodule does
        take = rng.choice(len(cloud), points, replace=len(cloud) < points)
        cols = [xyz[take]] + [cloud.channels[c][take, None].astype(np.float32) for c in channels]
        batch = {"points": torch.from_numpy(np.concatenate(cols, 1))[None].to(device)}
        embedded, has = _encode(model, batch, pooling)
        yield {"source": str(path)}, (embedded[0] if has[0] else None)


# -------------------------------------------------------------------------------- writing
def _embedding_column(vectors: list[np.ndarray], width: int) -> Any:
    import pyarrow as pa

    flat = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros(0, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), width)


def _write(out: Path, rows: list[dict[str, Any]], vectors: list[np.ndarray], width: int, crs: Any) -> bool:
    """Write the table (GeoParquet when `crs` is given); returns whether it has a geometry."""
    pa = lazy_import("pyarrow", "Parquet output")
    pq = lazy_import("pyarrow.parquet", "Parquet output")

    columns = [k for k in rows[0] if k != "geometry"]
    with atomic_output(out) as tmp:
        if crs is not None:
            gpd = lazy_import("geopandas", "GeoParquet output")
            frame = gpd.GeoDataFrame({k: [r[k] for r in rows] for k in columns},
                                     geometry=[r["geometry"] for r in rows], crs=crs.to_wkt())
            buffer = io.BytesIO()  # geopandas writes the GeoParquet metadata; the embedding column is added after
            frame.to_parquet(buffer, index=False, geometry_encoding="WKB")
            table = pq.read_table(pa.BufferReader(buffer.getvalue()))
        else:
            table = pa.table({k: [r[k] for r in rows] for k in columns})
        for name in ("row_off", "col_off", "height", "width"):
            if name in table.column_names:
                i = table.column_names.index(name)
                table = table.set_column(i, name, table.column(name).cast(pa.int64()))
        metadata = table.schema.metadata
        table = table.append_column("embedding", _embedding_column(vectors, width)).replace_schema_metadata(metadata)
        pq.write_table(table, tmp)
    return crs is not None


def _load_encoder(checkpoint: str | Path) -> nn.Module:
    import warnings

    from maekit.weights.hub import from_pretrained

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the one-line load report of converted public weights
        model = from_pretrained(checkpoint)
    return model.eval()


def embed(checkpoint: str | Path, source: str | Path, out: str | Path, pooling: Pooling = "mean",
          tile: int | None = None, stride: int | None = None, batch_size: int = 16, device: str = "cpu",
          file_bands: Sequence[str] | None = None, nodata: float | None = None, kind: str | None = None,
          pixdim: Sequence[float] | None = (1.0, 1.0, 1.0), points: int = 2048, seed: int = 0) -> EmbeddingTable:
    """Embed every sample of `source` with the encoder of `checkpoint` and write `out` (Parquet;
    GeoParquet for georeferenced rasters). See the module docstring for the rows per domain.

    Args:
        checkpoint: a kit checkpoint, exported folder or anything `from_pretrained` reads.
        source: a folder of chips / volume cases / point clouds, or one raster scene (tiled)
            or one point cloud file.
        out: the Parquet file to write.
        pooling: `mean` (over present tokens), `max`, or `cls` (class-token encoders).
        tile, stride: scene tiles' edge and step in pixels (default 256 rounded to the patch
            size; stride = tile, no overlap).
        batch_size: chips/tiles per encoder call.
        file_bands: names of the raster files' bands (default: band descriptions, else the model's).
        nodata: overrides the rasters' nodata value.
        kind, pixdim: volumes: `mri` / `ct` intensity handling (default from the modalities) and
            the voxel spacing they are resampled to (None keeps the files').
        points, seed: point clouds: points sampled per cloud, and the sampling seed.
    """
    source, out = Path(source), Path(out)
    if not source.exists():
        raise DataError(source, "does not exist")
    if out.suffix != ".parquet":
        raise ConfigError(f"{out}: the output is a Parquet file; name it *.parquet")
    model = _load_encoder(checkpoint).to(device)
    domain = type(model.adapter).__name__
    crs = None
    skipped = 0
    if domain == "MultispectralAdapter":
        rows, vectors, crs, skipped = _raster_rows(model, source, tile, stride, pooling, batch_size, device,
                                                   file_bands, nodata)
    elif domain in ("VolumeAdapter", "PointCloudAdapter"):
        if tile is not None or stride is not None:
            raise ConfigError("--tile/--stride apply to raster scenes only")
        if domain == "VolumeAdapter":
            if not source.is_dir():
                raise DataError(source, "is a file; a volume model embeds a folder of cases")
            found = _volume_rows(model, source, pooling, device, kind, pixdim)
        else:
            found = _cloud_rows(model, source, pooling, device, points, seed)
        rows, vectors = [], []
        for row, vector in found:
            if vector is None:
                skipped += 1
            else:
                rows.append(row)
                vectors.append(vector)
    else:
        raise ConfigError(f"{checkpoint}: a {domain} model; maekit embed takes multispectral, volume and point "
                          "cloud encoders")
    if not rows:
        raise DataError(source, f"gave no sample to embed ({skipped} without any valid pixel/voxel)")
    width = int(vectors[0].shape[0])
    geometry = _write(out, rows, vectors, width, crs)
    return EmbeddingTable(out, len(rows), width, skipped, geometry)


def cmd_embed(argv: list[str]) -> int:
    """Write encoder embeddings as a table: one row per chip, scene tile, volume case or point
    cloud; GeoParquet with footprints for georeferenced rasters."""
    p = argparse.ArgumentParser(prog="maekit embed", description=cmd_embed.__doc__)
    p.add_argument("checkpoint", help="kit checkpoint (.ckpt), exported folder, or any weights from_pretrained reads")
    p.add_argument("source", help="folder of chips / cases / clouds, or one raster scene (tiled)")
    p.add_argument("--out", required=True, help="the .parquet file to write")
    p.add_argument("--pooling", choices=["mean", "max", "cls"], default="mean")
    p.add_argument("--tile", type=int, default=None, help="scene tile edge in pixels (default 256, patch multiple)")
    p.add_argument("--stride", type=int, default=None, help="pixels between scene tiles (default: the tile)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--file-bands", nargs="*", default=None, help="names of the rasters' bands")
    p.add_argument("--nodata", type=float, default=None, help="override the rasters' nodata value")
    p.add_argument("--kind", choices=["mri", "ct"], default=None, help="volumes: intensity handling")
    p.add_argument("--points", type=int, default=2048, help="point clouds: points sampled per cloud")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    a = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    table = embed(a.checkpoint, a.source, a.out, a.pooling, a.tile, a.stride, a.batch_size, device, a.file_bands,
                  a.nodata, a.kind, points=a.points)
    print(f"wrote {table.rows} rows of {table.width}-wide embeddings to {table.path}"
          + (" (GeoParquet)" if table.geometry else "") + (f"; {table.skipped} skipped (no valid pixel)"
                                                             if table.skipped else ""))
    return 0
