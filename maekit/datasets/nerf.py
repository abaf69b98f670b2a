"""Old path of `maekit.domains.nerf.spec`, `maekit.domains.nerf.readers`, `maekit.domains.nerf.datamodule`
(kept so existing imports and recorded class paths work)."""

from maekit.lazy import forward_module

__getattr__ = forward_module(
    __name__, "maekit.domains.nerf.spec", "maekit.domains.nerf.readers",
    "maekit.domains.nerf.datamodule")
