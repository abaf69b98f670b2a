"""Whole-scene prediction over rasters far larger than the training crop, with bounded memory.

A scene is read strip by strip (one strip of tile rows at a time, never the whole raster), cut
into tiles of the training crop size that overlap by `overlap` pixels, run through the model in
batches, and the tiles' class probabilities are blended with a smooth separable weight (a raised
cosine over the overlap, flat inside), so tile borders leave no seam. Only a band of
`tile` rows x scene width is held at any time: rows that no later tile touches are finalised and
written, then the band moves down. Memory therefore does not grow with the raster's height and
grows with its width only through that band (`classes x tile x width` floats).

Outputs (atomic, GeoTIFF, on the source's grid: same CRS, transform and size):
- `<stem>_classes.tif`: uint8 class map; source nodata pixels are `label_nodata` (255), declared
  as the file's nodata;
- with `probabilities=True`, `<stem>_probabilities.tif`: float32 per-class probabilities, NaN
  (declared nodata) under source nodata.

CLI: `maekit predict-scene CKPT SCENE.tif [...] --out DIR` (see `cmd_predict_scene`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioError
from rasterio.windows import Window
from torch import Tensor

from maekit.domains.multispectral.readers import read_raster, resolve_band_indexes
from maekit.errors import ConfigError, DataError
from maekit.files import atomic_output
from maekit.progress import progress, say

Blend = Literal["cosine", "none"]
TileModel = Callable[[dict[str, Tensor]], Tensor]
"""Anything that maps a batch {`image` (B, C, h, w) stored dtype, `valid` (B, h, w) bool when the
scene has nodata} to logits (B, classes, h, w), e.g. a `SegmentationTask`."""


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: every `stride`, the last one flush with the end (so every
    pixel is covered and no tile hangs over the edge); [0] when the axis is shorter than a tile."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_window(tile: int, overlap: int, kind: Blend = "cosine") -> np.ndarray:
    """(tile,) weights of one tile axis: a raised cosine over the `overlap` pixels at each end and
    1 inside. Two neighbours `tile - overlap` apart sum to exactly 1 over their overlap, so the
    blend fades one tile into the next; weights stay > 0 so a scene border covered by one tile
    keeps its value. `none` is flat (plain averaging, which leaves seams; kept for comparison)."""
    weights = np.ones(tile, dtype=np.float64)
    if kind == "none" or overlap <= 0:
        return weights.astype(np.float32)
    distance = np.minimum(np.arange(tile), tile - 1 - np.arange(tile)).astype(np.float64)
    ramp = distance < overlap
    weights[ramp] = 0.5 - 0.5 * np.cos(np.pi * (distance[ramp] + 0.5) / overlap)
    return weights.astype(np.float32)


@dataclass
class ScenePrediction:
    """What `predict_raster` wrote: the class map, the probabilities (or None), tiles run."""

    classes: Path
    probabilities: Path | None
    tiles: int
    height: int
    width: int


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def predict_raster(
    model: TileModel,
    source: str | Path,
    out_dir: str | Path,
    num_classes: int,
    tile: int,
    overlap: int | None = None,
    file_bands: Sequence[str] | None = None,
    bands: Sequence[str | int] | None = None,
    nodata: float | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    probabilities: bool = False,
    blend: Blend = "cosine",
    label_nodata: int = 255,
    multiple_of: int = 1,
    gdal_cache_mb: int = 64,
) -> ScenePrediction:
    """Predict a whole raster scene tile by tile and write GeoTIFFs on its grid.

    Args:
        model: logits for a batch of tiles (see `TileModel`); called in eval mode, no grad.
        source: the scene (any raster rasterio reads; tiled GeoTIFFs read fastest).
        out_dir: folder for `<stem>_classes.tif` (and `<stem>_probabilities.tif`).
        num_classes: classes the model predicts (at most 255: the class map is uint8).
        tile: tile edge in pixels, normally the training crop size.
        overlap: pixels shared by neighbouring tiles (default a quarter of the tile).
        file_bands: names of the file's bands (default: the file's band descriptions, or 1..C).
        bands: bands to hand the model, by name or 1-based index (default all).
        nodata: overrides the file's nodata value.
        batch_size: tiles per model call.
        device: where the model runs (tiles are moved there, results come back per batch).
        probabilities: also write the blended per-class probabilities.
        blend: `cosine` (seamless) or `none` (flat weights; for comparison).
        label_nodata: class-map value under source nodata.
        multiple_of: the tile must be a multiple of this (the model's patch size).
        gdal_cache_mb: GDAL block cache limit while reading/writing (keeps memory flat).
    """
    source, out_dir = Path(source), Path(out_dir)
    overlap = tile // 4 if overlap is None else overlap
    if tile < 1 or tile % multiple_of:
        raise ConfigError(f"tile {tile} must be a positive multiple of the model's patch size {multiple_of}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"overlap {overlap} must be in [0, tile={tile})")
    if not 1 <= num_classes <= 255 or label_nodata < num_classes:
        raise ConfigError(f"num_classes {num_classes} must be 1..255 and label_nodata {label_nodata} not a class")
    if isinstance(model, torch.nn.Module):
        model.eval()
    stride = tile - overlap
    window_1d = torch.from_numpy(blend_window(tile, overlap, blend))
    weight_2d = (window_1d[:, None] * window_1d[None, :]).to(device)  # (tile, tile)
    stem = source.name.split(".")[0]
    classes_path = out_dir / f"{stem}_classes.tif"
    probs_path = out_dir / f"{stem}_probabilities.tif" if probabilities else None
    tiles_run = 0
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb), ExitStack() as stack:
        try:
            src = stack.enter_context(rasterio.open(source))
        except RasterioError as err:
            raise DataError(source, f"cannot be opened as a raster: {err}") from err
        names = list(file_bands) if file_bands is not None else _file_band_names(src)
        resolve_band_indexes(source, names, bands, src.count)  # fails early on unknown bands
        height, width = src.height, src.width
        fill = nodata if nodata is not None else src.nodata
        with_valid = fill is not None or height < tile or width < tile  # tile padding is invalid too
        profile = dict(driver="GTiff", height=height, width=width, crs=src.crs, transform=src.transform,
                       compress="deflate", tiled=False)
        tmp_classes = stack.enter_context(atomic_output(classes_path))
        dst = stack.enter_context(rasterio.open(tmp_classes, "w", count=1, dtype="uint8", nodata=label_nodata,
                                                **profile))
        dst_probs = None
        if probs_path is not None:
            tmp_probs = stack.enter_context(atomic_output(probs_path))
            dst_probs = stack.enter_context(rasterio.open(tmp_probs, "w", count=num_classes, dtype="float32",
                                                          nodata=float("nan"), **profile))
        rows = tile_starts(height, tile, stride)
        cols = tile_starts(width, tile, stride)
        band_h = min(tile, height)
        # the band of rows [top, top + band_h) that tiles still add to
        acc = torch.zeros(num_classes, band_h, width, dtype=torch.float32)
        wsum = torch.zeros(band_h, width, dtype=torch.float32)
        valid_band = np.zeros((band_h, width), dtype=bool)
        for k, top in enumerate(progress(rows, desc=f"{source.name}: tile rows", unit="row")):
            strip = read_raster(source, names, bands, Window(0, top, width, band_h), nodata, dataset=src)
            valid_band[:] = strip.valid
            image = torch.from_numpy(strip.image)
            valid = torch.from_numpy(strip.valid)
            jobs = [left for left in cols if valid[:, left:left + tile].any()]  # all-nodata tiles are skipped
            for chunk in _batches(jobs, batch_size):
                batch_image = torch.stack([_pad(image[:, :, c:c + tile], tile) for c in chunk]).to(device)
                batch: dict[str, Tensor] = {"image": batch_image}
                if with_valid:
                    batch["valid"] = torch.stack([_pad(valid[:, c:c + tile], tile) for c in chunk]).to(device)
                logits = model(batch)
                if logits.shape[1:] != (num_classes, tile, tile):
                    raise ConfigError(f"the model returned {tuple(logits.shape[1:])} for tiles of {tile}x{tile}; "
                                      f"expected ({num_classes}, {tile}, {tile})")
                probs = logits.float().softmax(1)
                # a pixel a tile could not predict (e.g. every token of the tile absent) weighs nothing there
                weights = weight_2d * torch.isfinite(probs).all(1)
                weighted = (torch.nan_to_num(probs) * weights[:, None]).cpu()
                weights = weights.cpu()
                for i, left in enumerate(chunk):
                    w = min(tile, width - left)
                    acc[:, :, left:left + w] += weighted[i, :, :band_h, :w]
                    wsum[:, left:left + w] += weights[i, :band_h, :w]
                tiles_run += len(chunk)
            done = (rows[k + 1] - top) if k + 1 < len(rows) else band_h  # rows no later tile touches
            _write_rows(dst, dst_probs, acc[:, :done], wsum[:done], valid_band[:done], top, label_nodata)
            if done < band_h:  # move the band down: keep the rows the next tiles still add to
                acc[:, :band_h - done] = acc[:, done:].clone()
                wsum[:band_h - done] = wsum[done:].clone()
                acc[:, band_h - done:] = 0
                wsum[band_h - done:] = 0
    return ScenePrediction(classes_path, probs_path, tiles_run, height, width)


def _pad(array: Tensor, tile: int) -> Tensor:
    """Zero-pad the last two axes up to `tile` (scenes smaller than a tile; padding is invalid)."""
    h, w = array.shape[-2:]
    if h == tile and w == tile:
        return array
    return torch.nn.functional.pad(array, (0, tile - w, 0, tile - h)) if array.dtype != torch.bool else \
        torch.nn.functional.pad(array.to(torch.uint8), (0, tile - w, 0, tile - h)).bool()


def _write_rows(dst: Any, dst_probs: Any, acc: Tensor, wsum: Tensor, valid: np.ndarray, top: int,
                label_nodata: int) -> None:
    """Finalise and write rows [top, top + len) of the outputs; pixels that are nodata in the
    source, or that no tile predicted, are nodata in the outputs."""
    probs = (acc / wsum.clamp_min(1e-12)).numpy()
    valid = valid & (wsum.numpy() > 0)
    labels = probs.argmax(0).astype(np.uint8)
    labels[~valid] = label_nodata
    window = Window(0, top, labels.shape[1], labels.shape[0])
    dst.write(labels[None], window=window)
    if dst_probs is not None:
        probs = probs.astype(np.float32)
        probs[:, ~valid] = np.nan
        dst_probs.write(probs, window=window)


def _file_band_names(src: Any) -> list[str]:
    """The file's band descriptions when every band has one, else 1..count."""
    names = list(src.descriptions or [])
    if len(names) == src.count and all(names):
        return [str(n) for n in names]
    return [str(i) for i in range(1, src.count + 1)]


# ------------------------------------------------------------------------------ from a checkpoint
def load_segmentation_task(checkpoint: str | Path) -> Any:
    """A fine-tuned `SegmentationTask` rebuilt from its Lightning checkpoint alone (the kit
    records the adapter's arguments there), in eval mode. Loaded with `weights_only=True`."""
    import inspect

    from maekit.finetune.tasks import EncoderTask, SegmentationTask
    from maekit.weights.export import read_checkpoint
    from maekit.weights.hub import _build_adapter

    ckpt = read_checkpoint(checkpoint)
    meta = ckpt["maekit"]
    if meta.get("task") != "SegmentationTask":
        raise DataError(checkpoint, f"holds a {meta.get('task') or 'pretraining'} model; predict-scene needs a "
                                    "fine-tuned SegmentationTask checkpoint (maekit fit -c configs/naip/segment.yaml)")
    accepted = {name for cls in (SegmentationTask, EncoderTask)  # the task's own and its **encoder arguments
                for name in inspect.signature(cls.__init__).parameters} - {"self", "adapter", "encoder"}
    hparams = {k: v for k, v in dict(ckpt.get("hyper_parameters", {})).items() if k in accepted}
    hparams["pretrained"] = None  # the checkpoint holds every weight
    task = SegmentationTask(_build_adapter(meta["adapter"]), **hparams)
    state = {k.replace("._orig_mod.", "."): v for k, v in ckpt["state_dict"].items()}
    missing, unexpected = task.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(checkpoint, f"does not match the model it describes: missing {missing[:5]}, "
                                    f"unexpected {unexpected[:5]}")
    return task.eval()


def cmd_predict_scene(argv: list[str]) -> int:
    """Predict whole GeoTIFF scenes with a fine-tuned segmentation checkpoint: overlapping tiles,
    blended, written as GeoTIFFs with the source's CRS, transform and nodata."""
    p = argparse.ArgumentParser(prog="maekit predict-scene", description=cmd_predict_scene.__doc__)
    p.add_argument("checkpoint", help="fine-tuned SegmentationTask checkpoint (.ckpt)")
    p.add_argument("scenes", nargs="+", help="raster scenes (GeoTIFF...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tile", type=int, default=None,
                   help="tile edge in pixels (the training crop; default 256 rounded to the patch size)")
    p.add_argument("--overlap", type=int, default=None, help="pixels neighbouring tiles share (default tile/4)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per model call")
    p.add_argument("--file-bands", nargs="*", default=None,
                   help="names of the file's bands (default: band descriptions, else the model's bands)")
    p.add_argument("--bands", nargs="*", default=None, help="bands to feed the model (default: the model's bands "
                                                             "that the file has)")
    p.add_argument("--nodata", type=float, default=None, help="override the file's nodata value")
    p.add_argument("--probabilities", action="store_true", help="also write per-class probabilities")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    a = p.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    task = load_segmentation_task(a.checkpoint).to(device)
    adapter = task.adapter
    patch = int(adapter.patch_size)
    tile = a.tile if a.tile is not None else max(patch, 256 // patch * patch)
    for scene in a.scenes:
        file_bands = a.file_bands
        if file_bands is None:
            try:
                with rasterio.open(scene) as src:
                    described = _file_band_names(src)
                    count = src.count
            except RasterioError as err:
                raise DataError(scene, f"cannot be opened as a raster: {err}") from err
            model_bands = list(adapter.channels)
            file_bands = described if set(described) & set(model_bands) else (
                model_bands if count == len(model_bands) else described)
        bands = a.bands if a.bands is not None else [b for b in file_bands if b in adapter.channels]
        if not bands:
            raise DataError(scene, f"has none of the model's bands {list(adapter.channels)} (its bands: "
                                   f"{list(file_bands)}); name them with --file-bands")
        names = [file_bands[int(b) - 1] if str(b).isdigit() else str(b) for b in bands]
        adapter.set_input_channels(names)
        result = predict_raster(task, scene, a.out, task.hparams.num_classes, tile, a.overlap, file_bands, bands,
                                a.nodata, a.batch_size, device, a.probabilities, multiple_of=patch)
        say(f"{scene}: {result.tiles} tiles of {tile}px -> {result.classes}"
              + (f", {result.probabilities}" if result.probabilities else ""))
    return 0


def strip_memory_bytes(num_classes: int, tile: int, width: int, bands: int, itemsize: int = 1) -> int:
    """Bytes the band accumulator and one input strip take (the part that scales with the scene)."""
    return 4 * (num_classes + 1) * tile * width + (bands * itemsize + 1) * tile * width


__all__ = ["ScenePrediction", "blend_window", "cmd_predict_scene", "load_segmentation_task", "predict_raster",
           "strip_memory_bytes", "tile_starts"]
