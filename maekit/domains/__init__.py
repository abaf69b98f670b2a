"""Domain adapters: one per data type, each turning native batches into `Tokens`."""

from maekit.domains.multispectral import MultispectralAdapter

__all__ = ["MultispectralAdapter"]
