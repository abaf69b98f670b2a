"""Old path of `maekit.domains.pointcloud.readers`, `maekit.domains.pointcloud.datamodule`
(kept so existing imports and recorded class paths work)."""

from maekit.lazy import forward_module

__getattr__ = forward_module(__name__, "maekit.domains.pointcloud.readers", "maekit.domains.pointcloud.datamodule")
