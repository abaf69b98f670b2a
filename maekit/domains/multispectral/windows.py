"""Random windows from large rasters (whole NAIP quads, Sentinel-2 tiles) with windowed reads.

Each worker keeps its rasterio handles open, so a chip costs one windowed read of the tiles
it touches: no mosaicking, no reprojection, no float conversion on the loader side.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset

from maekit.data.base import worker_count
from maekit.domains.multispectral.spec import get_preset
from maekit.domains.multispectral.datamodule import list_chips
from maekit.domains.multispectral.readers import read_raster, resolve_band_indexes
from maekit.errors import ConfigError, DataError


class RandomWindowDataset(Dataset):
    """`length` random `size` x `size` windows from a list of rasters.

    Windows whose pixels are all nodata are redrawn (up to `max_tries`, then an error naming
    the file). With `seed` set, window `i` is the same every epoch (validation); without, each
    process (DataLoader worker, distributed rank) draws fresh windows from its own seeded stream.
    """

    def __init__(self, paths: Sequence[str | Path], file_bands: Sequence[str], bands: Sequence[str | int] | None,
                 size: int, length: int, nodata: float | None = None, seed: int | None = None,
                 max_tries: int = 10, with_valid: bool = True) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ConfigError("RandomWindowDataset needs at least one raster")
        self.file_bands, self.bands = list(file_bands), bands
        self.size, self.length, self.nodata, self.seed = size, length, nodata, seed
        self.max_tries, self.with_valid = max_tries, with_valid
        self._handles: dict[Path, rasterio.DatasetReader] = {}
        self._rng: random.Random | None = None
        self._rng_key: tuple[int, int] | None = None
        self.shapes = []
        for path in self.paths:
            try:
                with rasterio.open(path) as src:
                    resolve_band_indexes(path, self.file_bands, bands, src.count)
                    if src.width < size or src.height < size:
                        raise DataError(path, f"is {src.width}x{src.height}, smaller than the window {size}")
                    self.shapes.append((src.height, src.width))
            except rasterio.errors.RasterioError as err:
                raise DataError(path, f"cannot be opened as a raster: {err}") from err

    def __len__(self) -> int:
        return self.length

    def _open(self, path: Path) -> rasterio.DatasetReader:
        if path not in self._handles:
            self._handles[path] = rasterio.open(path)
        return self._handles[path]

    def close(self) -> None:
        """Close the open raster handles (they reopen on the next read)."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __getstate__(self) -> dict[str, Any]:  # open handles do not cross process boundaries
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _stream(self) -> random.Random:
        """This process's own generator: seeded from torch's seed (which differs per DataLoader
        worker and follows `seed_everything`) and the distributed rank, so ranks and workers
        draw different windows and a seeded run repeats."""
        key = (os.getpid(), torch.initial_seed())
        if self._rng_key != key:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", 0))
            self._rng = random.Random(torch.initial_seed() * 1_000_003 + rank)
            self._rng_key = key
        return self._rng

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = random.Random(self.seed * 1_000_003 + index) if self.seed is not None else self._stream()
        for _ in range(self.max_tries):
            f = rng.randrange(len(self.paths))
            height, width = self.shapes[f]
            window = Window(rng.randrange(width - self.size + 1), rng.randrange(height - self.size + 1),
                            self.size, self.size)
            chip = read_raster(self.paths[f], self.file_bands, self.bands, window, self.nodata,
                               dataset=self._open(self.paths[f]))
            if chip.valid.any():
                item = {"image": torch.from_numpy(chip.image)}
                if self.with_valid:
                    item["valid"] = torch.from_numpy(chip.valid)
                return item
        raise DataError(self.paths[f], f"{self.max_tries} random windows in a row held only nodata")


    def shard_plan(self, seed: int) -> tuple[Dataset, dict[str, Any]]:
        """Shards store a fixed, seeded set of windows; nothing random is left for stream time."""
        plain = copy.copy(self)
        if plain.seed is None:  # training windows: a fixed draw, apart from validation's (seed 0)
            plain.seed = seed + 1
        return plain, {"kind": "windows", "finish": "maekit.data.streaming:FinishAsStored", "window_seed": plain.seed}


class RasterDataModule(L.LightningDataModule):
    """Pretraining on random windows of large rasters (a folder or list of GeoTIFFs).

    Args:
        root: a raster file or a folder of them.
        preset, file_bands, bands, nodata: as in `ChipDataModule`.
        size: window edge in pixels.
        samples_per_epoch, val_samples: windows drawn per epoch (training: fresh each epoch;
            validation: fixed).
        batch_size, num_workers: loader settings.
    """

    def __init__(self, root: str, preset: str | None = "naip", file_bands: list[str] | None = None,
                 bands: list[str | int] | None = None, size: int = 256, samples_per_epoch: int = 10000,
                 val_samples: int = 500, batch_size: int = 32, num_workers: int = 0,
                 nodata: float | None = None) -> None:
        super().__init__()
        p = get_preset(preset) if preset else None
        self.root = Path(root)
        self.file_bands = list(file_bands) if file_bands is not None else list(p.bands if p else [])
        self.requested_bands = bands
        self.bands = [self.file_bands[int(b) - 1] if str(b).isdigit() else str(b) for b in (bands or self.file_bands)]
        self.size, self.samples_per_epoch, self.val_samples = size, samples_per_epoch, val_samples
        self.batch_size, self.num_workers = batch_size, num_workers
        self.nodata = nodata if nodata is not None else (p.nodata if p else None)
        self.datasets: dict[str, RandomWindowDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        paths = [self.root] if self.root.is_file() else list_chips(self.root)
        if not paths:
            raise DataError(self.root, "holds no raster files")
        common = (paths, self.file_bands, self.requested_bands, self.size)
        self.datasets["train"] = RandomWindowDataset(*common, self.samples_per_epoch, self.nodata)
        self.datasets["val"] = RandomWindowDataset(*common, self.val_samples, self.nodata, seed=0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["train"], self.batch_size, num_workers=worker_count(self.num_workers),
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["val"], self.batch_size, num_workers=worker_count(self.num_workers))
