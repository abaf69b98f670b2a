"""Old path of `maekit.domains.multispectral.samples` (kept so existing imports and recorded class paths work)."""

from maekit.lazy import alias_module

alias_module(__name__, "maekit.domains.multispectral.samples")
