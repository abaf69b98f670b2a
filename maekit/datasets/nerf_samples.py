"""Old path of `maekit.domains.nerf.samples` (kept so existing imports and recorded class paths work)."""

from maekit.lazy import alias_module

alias_module(__name__, "maekit.domains.nerf.samples")
