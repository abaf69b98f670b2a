"""Domain adapters: one per data type, each turning native batches into `Tokens`."""

from maekit.domains.multispectral import MultispectralAdapter
from maekit.domains.patches import PatchGridAdapter
from maekit.domains.volume import VolumeAdapter

__all__ = ["MultispectralAdapter", "PatchGridAdapter", "VolumeAdapter"]
