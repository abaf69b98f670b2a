"""Old path of `maekit.domains.skeleton.readers`, `maekit.domains.skeleton.datamodule`
(kept so existing imports and recorded class paths work)."""

from maekit.lazy import forward_module

__getattr__ = forward_module(__name__, "maekit.domains.skeleton.readers", "maekit.domains.skeleton.datamodule")
