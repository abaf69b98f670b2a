"""Point clouds as Point-MAE tokens (FPS centres + kNN groups).

Importing this package is cheap and needs no extra; meshes and PLY/PCD scans need open3d and
HDF5 layouts h5py (`pip install 'maekit[3d]'`), LAS/LAZ needs laspy (`maekit[lidar]`), each
imported only when such a file is read.
"""

from maekit.domains.registry import register_domain
from maekit.lazy import lazy_exports

_HERE = "maekit.domains.pointcloud"
__getattr__ = lazy_exports(__name__, {
    "PointCloudAdapter": f"{_HERE}.adapter", "render_points": f"{_HERE}.adapter",
    "PointCloud": f"{_HERE}.readers", "read_points": f"{_HERE}.readers", "find_point_samples": f"{_HERE}.readers",
    "PointCloudDataModule": f"{_HERE}.datamodule", "PointCloudDataset": f"{_HERE}.datamodule",
    "collate_points": f"{_HERE}.datamodule",
    "PointCloudClassificationTask": f"{_HERE}.task",
    "make_pointcloud_dataset": f"{_HERE}.samples",
})
__all__ = ["PointCloud", "PointCloudAdapter", "render_points", "PointCloudClassificationTask", "PointCloudDataModule",
           "PointCloudDataset", "collate_points", "find_point_samples", "make_pointcloud_dataset", "read_points"]

register_domain(
    "pointcloud",
    adapter=f"{_HERE}.adapter:PointCloudAdapter",
    datamodules=[f"{_HERE}.datamodule:PointCloudDataModule"],
    samples={"pointcloud": f"{_HERE}.samples:sample_data", "modelnet40": f"{_HERE}.samples:sample_data"},
    extra="3d",
    description="PLY/PCD/XYZ/PTS, OFF/OBJ/STL meshes, LAS/LAZ, lidar .bin; ModelNet40 (text, HDF5), "
                "ScanObjectNN, ShapeNet-55, class folders",
    example=f"{_HERE}.samples:example",
    commands={"embed-points": f"{_HERE}.scene:cmd_embed_points"},
    shard_kinds={"points": f"{_HERE}.datamodule:FinishPoints"},
)
