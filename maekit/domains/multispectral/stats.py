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
    total = np.zeros(len(bands))
    square = np.zeros(len(bands))
    count = 0
    step = max(1, len(dataset) // max_files)
    files = 0
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
        raise DataError(getattr(datamodule, "root", "?"), "no valid pixel to compute statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean**2, 0.0))
    return {"bands": bands, "mean": mean.tolist(), "std": std.tolist(), "pixels": count, "files": files}
