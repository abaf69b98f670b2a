"""Domains: one package per data type (adapter, readers, datamodule, samples), registered in
`maekit.domains.registry`. Names are re-exported lazily (old class paths such as
`maekit.domains.MultispectralAdapter` keep working without importing every domain)."""

from maekit.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "MultispectralAdapter": "maekit.domains.multispectral.adapter",
    "NerfAdapter": "maekit.domains.nerf.adapter",
    "PatchGridAdapter": "maekit.domains.patches",
    "PointCloudAdapter": "maekit.domains.pointcloud.adapter",
    "SkeletonAdapter": "maekit.domains.skeleton.adapter",
    "Topology": "maekit.domains.skeleton.spec",
    "VolumeAdapter": "maekit.domains.volume.adapter",
})
__all__ = ["MultispectralAdapter", "NerfAdapter", "PatchGridAdapter", "PointCloudAdapter", "SkeletonAdapter", "Topology",
           "VolumeAdapter"]
