"""Pretrained weights: loading into tasks, verified downloads, export, `from_pretrained`."""

from maekit.weights.download import WeightsError, cache_root, download
from maekit.weights.export import export, read_checkpoint
from maekit.weights.hub import PretrainedEncoder, add_entry, from_pretrained, registry, resolve
from maekit.weights.loading import encoder_state, load_encoder, read_state_dict

__all__ = [
    "PretrainedEncoder", "WeightsError", "add_entry", "cache_root", "download", "encoder_state", "export",
    "from_pretrained", "load_encoder", "read_checkpoint", "read_state_dict", "registry", "resolve",
]
