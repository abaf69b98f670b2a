"""Old home of readers, datamodules and sample generators, now in `maekit.domains.<domain>`
(and `maekit.data` for what domains share). Names are re-exported lazily, so an old class path
(`maekit.datasets.ChipDataModule`) imports only its own domain and that domain's extra."""

from maekit.lazy import lazy_exports

_MS, _VOL, _PC = "maekit.domains.multispectral", "maekit.domains.volume", "maekit.domains.pointcloud"
__getattr__ = lazy_exports(__name__, {
    "PRESETS": f"{_MS}.spec", "BandPreset": f"{_MS}.spec", "get_preset": f"{_MS}.spec",
    "ChipDataModule": f"{_MS}.datamodule", "ChipDataset": f"{_MS}.datamodule",
    "Chip": f"{_MS}.readers", "read_chip": f"{_MS}.readers", "read_raster": f"{_MS}.readers",
    "GeoSamplerDataModule": f"{_MS}.torchgeo", "TorchGeoClassificationDataModule": f"{_MS}.torchgeo",
    "RandomWindowDataset": f"{_MS}.windows", "RasterDataModule": f"{_MS}.windows",
    "VolumeDataModule": f"{_VOL}.datamodule", "VolumeDataset": f"{_VOL}.datamodule",
    "find_cases": f"{_VOL}.readers", "load_case": f"{_VOL}.readers",
    "NerfGridDataModule": "maekit.domains.nerf.datamodule", "read_nerf_grid": "maekit.domains.nerf.readers",
    "PointCloudDataModule": f"{_PC}.datamodule", "PointCloudDataset": f"{_PC}.datamodule",
    "read_points": f"{_PC}.readers",
    "SkeletonDataModule": "maekit.domains.skeleton.datamodule",
    "load_skeleton_file": "maekit.domains.skeleton.readers", "read_array_file": "maekit.domains.skeleton.readers",
    "read_skeleton_file": "maekit.domains.skeleton.readers",
    "StreamingShardsDataModule": "maekit.data.shards",
})
__all__ = [
    "PRESETS", "BandPreset", "Chip", "ChipDataModule", "ChipDataset", "GeoSamplerDataModule", "NerfGridDataModule",
    "PointCloudDataModule", "PointCloudDataset", "SkeletonDataModule", "load_skeleton_file", "read_array_file",
    "read_nerf_grid", "read_points", "read_skeleton_file",
    "RandomWindowDataset", "RasterDataModule", "TorchGeoClassificationDataModule", "VolumeDataModule", "VolumeDataset", "find_cases", "get_preset", "load_case",
    "read_chip", "read_raster",
]
