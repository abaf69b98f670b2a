"""Readers, datamodules and sample-data generators."""

from maekit.datasets.bands import PRESETS, BandPreset, get_preset
from maekit.datasets.chips import ChipDataModule, ChipDataset
from maekit.datasets.medical import VolumeDataModule, VolumeDataset, find_cases, load_case
from maekit.datasets.nerf import NerfGridDataModule, read_nerf_grid
from maekit.datasets.pointcloud import PointCloudDataModule, PointCloudDataset, read_points
from maekit.datasets.skeleton import SkeletonDataModule, load_skeleton_file, read_array_file, read_skeleton_file
from maekit.datasets.raster import Chip, read_chip, read_raster
from maekit.datasets.torchgeo_interop import GeoSamplerDataModule, TorchGeoClassificationDataModule
from maekit.datasets.windows import RandomWindowDataset, RasterDataModule

__all__ = [
    "PRESETS", "BandPreset", "Chip", "ChipDataModule", "ChipDataset", "GeoSamplerDataModule", "NerfGridDataModule",
    "PointCloudDataModule", "PointCloudDataset", "SkeletonDataModule", "load_skeleton_file", "read_array_file",
    "read_nerf_grid", "read_points", "read_skeleton_file",
    "RandomWindowDataset", "RasterDataModule", "TorchGeoClassificationDataModule", "VolumeDataModule", "VolumeDataset", "find_cases", "get_preset", "load_case",
    "read_chip", "read_raster",
]
