"""Old path of `maekit.domains.pointcloud.ops` (kept so existing imports and recorded class paths work)."""

from maekit.lazy import alias_module

alias_module(__name__, "maekit.domains.pointcloud.ops")
