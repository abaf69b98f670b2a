"""Using torchgeo datasets as they are: a `RasterDataset` (NAIP...) with a geo sampler, and
torchgeo's classification datasets (FireRisk, EuroSAT...), delivering raw-valued batches.

torchgeo hands images as float tensors of the stored values; the adapter scales and
normalises them, so no torchgeo normalisation transform must be added.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from maekit.data.base import worker_count
from maekit.errors import ConfigError


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import {dotted!r}: {err}") from err


def geo_collate(samples: list[dict[str, Any]], nodata: float | None) -> dict[str, torch.Tensor]:
    """Stack torchgeo samples into a kit batch (image + validity mask), dropping CRS/bounds."""
    image = torch.stack([s["image"] for s in samples])
    batch = {"image": image}
    if nodata is not None:
        batch["valid"] = ~(image == nodata).all(1)
    if "mask" in samples[0]:
        batch["mask"] = torch.stack([s["mask"] for s in samples]).long()
    return batch


class GeoSamplerDataModule(L.LightningDataModule):
    """A torchgeo `RasterDataset` sampled with `RandomGeoSampler` (train) / `GridGeoSampler` (val).

    Args:
        paths: files or folders for the dataset class (e.g. a folder of NAIP quads).
        dataset_class: dotted path of a torchgeo `RasterDataset` subclass.
        dataset_kwargs: further arguments of that class (`res`, `crs`, `bands`...).
        dataset: an already built dataset (Python use); replaces the three above.
        bands: the dataset's band names in the order it returns them (default: its `bands`).
        size: patch edge in pixels.
        samples_per_epoch: random patches per training epoch.
        val_stride: stride of the validation grid (default: `size`, no overlap).
        nodata: value marking missing pixels (torchgeo fills gaps with 0).
    """

    def __init__(self, paths: str | list[str] | None = None, dataset_class: str = "torchgeo.datasets.NAIP",
                 dataset_kwargs: dict[str, Any] | None = None, dataset: Any = None,
                 bands: list[str] | None = None, size: int = 256, samples_per_epoch: int = 1000,
                 val_stride: int | None = None, batch_size: int = 16, num_workers: int = 0,
                 nodata: float | None = 0) -> None:
        super().__init__()
        if dataset is None and paths is None:
            raise ConfigError("GeoSamplerDataModule needs `paths` (or a built `dataset`)")
        self.paths, self.dataset_class = paths, dataset_class
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.dataset = dataset
        self.bands = list(bands) if bands is not None else None
        self.size, self.samples_per_epoch = size, samples_per_epoch
        self.val_stride = val_stride or size
        self.batch_size, self.num_workers, self.nodata = batch_size, num_workers, nodata
        if dataset is not None:
            self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = _import(self.dataset_class)(paths=self.paths, **self.dataset_kwargs)
        if self.bands is None:
            self.bands = list(getattr(self.dataset, "bands", []))

    def _loader(self, sampler: Any) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler,
                          num_workers=worker_count(self.num_workers),
                          collate_fn=functools.partial(geo_collate, nodata=self.nodata))

    def train_dataloader(self) -> DataLoader:
        from torchgeo.samplers import RandomGeoSampler

        return self._loader(RandomGeoSampler(self.dataset, self.size, self.samples_per_epoch))

    def val_dataloader(self) -> DataLoader:
        from torchgeo.samplers import GridGeoSampler

        return self._loader(GridGeoSampler(self.dataset, self.size, self.val_stride))


class _RawClassification(Dataset):
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.dataset[index]
        return {"image": sample["image"], "label": torch.as_tensor(sample["label"]).long()}


class TorchGeoClassificationDataModule(L.LightningDataModule):
    """A torchgeo scene-classification dataset (FireRisk, EuroSAT, UCMerced...) as kit batches.

    Args:
        dataset_class: dotted path of the torchgeo dataset class.
        root: its data folder (torchgeo layout).
        bands: names of the image bands as the model knows them (FireRisk: R, G, B).
        train_split, val_split, test_split: split names the dataset takes.
        download: let torchgeo download the data.
        dataset_kwargs: further arguments of the dataset class.
    """

    def __init__(self, root: str, dataset_class: str = "torchgeo.datasets.FireRisk",
                 bands: list[str] | None = None, train_split: str = "train", val_split: str = "val",
                 test_split: str | None = None, batch_size: int = 32, num_workers: int = 0,
                 download: bool = False, dataset_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.root, self.dataset_class = root, dataset_class
        self.bands = list(bands) if bands is not None else ["R", "G", "B"]
        self.splits = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self.batch_size, self.num_workers, self.download = batch_size, num_workers, download
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.datasets: dict[str, _RawClassification] = {}
        self.classes: list[str] = list(getattr(_import(dataset_class), "classes", []))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cls = _import(self.dataset_class)
        for name, split in self.splits.items():
            ds = cls(root=self.root, split=split, download=self.download, **self.dataset_kwargs)
            self.datasets[name] = _RawClassification(ds)
            self.classes = list(getattr(ds, "classes", self.classes))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=worker_count(self.num_workers), persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
