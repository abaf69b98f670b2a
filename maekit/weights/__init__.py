"""Pretrained weights: loading into tasks, verified downloads, export, `from_pretrained`.

Modules (imports run one way): `download` (verified cache), `formats` (the one reader of
on-disk formats), `converters` (public layouts), `loading` (into tasks) <- `hub`
(`from_pretrained`, registry), `export` (publishable folders).
"""

from maekit.weights.download import WeightsError, cache_root, download
from maekit.weights.export import export
from maekit.weights.formats import encoder_state, read_checkpoint, read_state_dict
from maekit.weights.hub import PretrainedEncoder, add_entry, from_pretrained, registry, resolve
from maekit.weights.loading import load_encoder

__all__ = [
    "PretrainedEncoder", "WeightsError", "add_entry", "cache_root", "download", "encoder_state", "export",
    "from_pretrained", "load_encoder", "read_checkpoint", "read_state_dict", "registry", "resolve",
]
