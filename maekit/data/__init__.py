"""What every domain's data shares: the datamodule base class, resumable loaders and streaming
shards. Nothing here imports a domain."""

from maekit.lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "MaekitDataModule": "maekit.data.base", "worker_count": "maekit.data.base",
    "ResumableLoader": "maekit.data.resumable", "training_loader": "maekit.data.resumable",
    "StreamingShardsDataModule": "maekit.data.shards", "write_shards": "maekit.data.shards",
})
__all__ = ["MaekitDataModule", "ResumableLoader", "StreamingShardsDataModule", "training_loader", "worker_count",
           "write_shards"]
