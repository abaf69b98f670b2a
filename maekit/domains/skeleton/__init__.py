"""Skeleton sequences: one token per joint per 4-frame segment (MAMP), topologies as data.

Importing this package needs no extra (numpy only).
"""

from maekit.domains.registry import register_domain
from maekit.lazy import lazy_exports

_HERE = "maekit.domains.skeleton"
__getattr__ = lazy_exports(__name__, {
    "SkeletonAdapter": f"{_HERE}.adapter",
    "Topology": f"{_HERE}.spec", "TOPOLOGIES": f"{_HERE}.spec", "NTU25": f"{_HERE}.spec", "COCO17": f"{_HERE}.spec",
    "load_skeleton_file": f"{_HERE}.readers", "read_array_file": f"{_HERE}.readers",
    "read_skeleton_file": f"{_HERE}.readers",
    "SkeletonDataModule": f"{_HERE}.datamodule", "SkeletonDataset": f"{_HERE}.datamodule",
    "make_skeleton_dataset": f"{_HERE}.samples",
})
__all__ = ["COCO17", "NTU25", "SkeletonAdapter", "SkeletonDataModule", "SkeletonDataset", "TOPOLOGIES", "Topology",
           "load_skeleton_file", "make_skeleton_dataset", "read_array_file", "read_skeleton_file"]

register_domain(
    "skeleton",
    adapter=f"{_HERE}.adapter:SkeletonAdapter",
    datamodules=[f"{_HERE}.datamodule:SkeletonDataModule"],
    samples={"skeleton": f"{_HERE}.samples:sample_data"},
    description="NTU RGB+D .skeleton / npz / npy, COCO-17 keypoints; topologies in config",
    example=f"{_HERE}.samples:example",
    shard_kinds={"skeleton": f"{_HERE}.datamodule:FinishSkeleton"},
)
