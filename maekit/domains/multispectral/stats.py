"""Per-band statistics of a dataset, in the physical units the adapter normalises."""

from __future__ import annotations

from typing import Any

import numpy as np

from maekit.errors import DataError
from maekit.progress import progress
from maekit.tokens import ScaledInput


def band_statistics(datamodule: Any, adapter: Any | None, max_files: int = 1000) -> dict[str, Any]:
    """Mean and std of every band over valid pixels of (up to `max_files`) training chips.

    Raw values are mapped with the adapter's per-band `scale`/`offset` when it has them, so the
    numbers are what the adapter's `mean`/`std` expect. Accumulated in float64.
    """
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    bands = list(datamodule.bands)
    scale = np.ones(len(bands))
    offset = np.zeros(len(bands))
    if isinstance(adapter, ScaledInput):
        index = [adapter.channels.index(b) for b in bands]  # type: ignore[attr-defined]
        scale = adapter.scale.double().numpy()[index]
        offset = adapter.offset.double().numpy()[index]
    mean, std, count, files = chip_statistics(dataset, scale, offset, max_files)
    if count == 0:
        raise DataError(getattr(datamodule, "root", "?"), "no valid pixel to compute statistics from")
    return {"bands": bands, "mean": mean.tolist(), "std": std.tolist(), "pixels": count, "files": files}


def chip_statistics(dataset: Any, scale: np.ndarray, offset: np.ndarray, max_files: int = 1000
                    ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(mean, std, valid pixels, files read) of every band of a chip dataset's items (`image`
    (C, H, W) raw, optional `valid`), mapped to physical units with `raw * scale + offset`, over
    an even stride of at most `max_files` items. Accumulated in float64; mean/std are NaN when
    there is no valid pixel."""
    scale = np.asarray(scale, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    total = np.zeros(len(scale))
    square = np.zeros(len(scale))
    count = files = 0
    step = max(1, len(dataset) // max_files)
    for i in progress(range(0, len(dataset), step), desc="files", unit="file"):
        item = dataset[i]
        image = item["image"].double().numpy()
        valid = item["valid"].numpy() if "valid" in item else np.ones(image.shape[1:], dtype=bool)
        pixels = image[:, valid] * scale[:, None] + offset[:, None]
        total += pixels.sum(1)
        square += (pixels**2).sum(1)
        count += pixels.shape[1]
        files += 1
    if count == 0:
        return np.full(len(scale), np.nan), np.full(len(scale), np.nan), 0, files
    mean = total / count
    return mean, np.sqrt(np.maximum(square / count - mean**2, 0.0)), count, files
