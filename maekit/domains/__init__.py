"""Domain adapters: one per data type, each turning native batches into `Tokens`."""

from maekit.domains.multispectral import MultispectralAdapter
from maekit.domains.nerf import NerfAdapter
from maekit.domains.patches import PatchGridAdapter
from maekit.domains.pointcloud import PointCloudAdapter
from maekit.domains.skeleton import SkeletonAdapter, Topology
from maekit.domains.volume import VolumeAdapter

__all__ = ["MultispectralAdapter", "NerfAdapter", "PatchGridAdapter", "PointCloudAdapter", "SkeletonAdapter", "Topology",
           "VolumeAdapter"]
