"""Old path of `maekit.domains.volume.spec`, `maekit.domains.volume.readers`, `maekit.domains.volume.datamodule`
(kept so existing imports and recorded class paths work)."""

from maekit.lazy import forward_module

__getattr__ = forward_module(
    __name__, "maekit.domains.volume.spec", "maekit.domains.volume.readers",
    "maekit.domains.volume.datamodule")
