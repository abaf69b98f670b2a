"""Readers, datamodules and sample-data generators."""

from maekit.datasets.bands import PRESETS, BandPreset, get_preset
from maekit.datasets.chips import ChipDataModule, ChipDataset
from maekit.datasets.raster import Chip, read_chip, read_raster
from maekit.datasets.torchgeo_interop import GeoSamplerDataModule, TorchGeoClassificationDataModule
from maekit.datasets.windows import RandomWindowDataset, RasterDataModule

__all__ = [
    "PRESETS", "BandPreset", "Chip", "ChipDataModule", "ChipDataset", "GeoSamplerDataModule",
    "RandomWindowDataset", "RasterDataModule", "TorchGeoClassificationDataModule", "get_preset",
    "read_chip", "read_raster",
]
