"""Pretrained weights: loading into tasks, verified downloads, export, `from_pretrained`.

Modules (imports run one way): `download` (verified cache), `formats` (the one reader of
on-disk formats), `converters` (public layouts), `loading` (into tasks) <- `hub`
(`from_pretrained`, registry), `export` (publishable folders), `ecosystem` (timm / MONAI
layouts).
"""

from maekit.weights.download import WeightsError, cache_root, download
from maekit.weights.ecosystem import export_monai, export_timm, match_layer_norm_eps, to_monai, to_timm
from maekit.weights.export import export
from maekit.weights.formats import encoder_state, read_checkpoint, read_state_dict
from maekit.weights.hub import PretrainedEncoder, add_entry, from_pretrained, registry, resolve
from maekit.weights.loading import load_encoder

__all__ = [
    "PretrainedEncoder", "WeightsError", "add_entry", "cache_root", "download", "encoder_state", "export",
    "export_monai", "export_timm", "from_pretrained", "load_encoder", "match_layer_norm_eps", "read_checkpoint",
    "read_state_dict", "registry", "resolve", "to_monai", "to_timm",
]
