"""`from_pretrained`: a ready encoder (or the full MAE) from a registry name, a local path, an
http(s) URL or `hf://org/repo/file`, with its bands/modalities and statistics attached.

Registry entries are JSON objects (name, url, sha256, domain, backbone, bands or modalities,
size, licence, source). The kit ships only entries it can load and verify; your own entries
live in `$MAEKIT_HOME/registry.json` (`maekit weights add`).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from maekit.backbones import SIZES, TransformerStack
from maekit.errors import ConfigError, DataError
from maekit.files import write_text_atomic
from maekit.tokens import DomainAdapter, Tokens
from maekit.weights.download import WeightsError, cache_root, download

#: public checkpoints the kit can convert. Hashes are pinned only where known; the others are
#: marked unverified and need `trust_unverified` to download.
BUILTIN_REGISTRY: list[dict[str, Any]] = [
    {"name": "mae-vit-base-imagenet", "domain": "multispectral", "backbone": "vit-base", "bands": ["R", "G", "B"],
     "size": "base", "licence": "CC-BY-NC-4.0",
     "source": "facebookresearch/mae via timm (vit_base_patch16_224.mae)",
     "url": "https://huggingface.co/timm/vit_base_patch16_224.mae/resolve/main/model.safetensors",
     "filename": "vit_base_patch16_224.mae.safetensors", "sha256": None},
]


def registry_file() -> Path:
    return cache_root().parent / "registry.json"


def registry() -> dict[str, dict[str, Any]]:
    """All entries by name: the built-in ones, then the user's."""
    entries = {e["name"]: e for e in BUILTIN_REGISTRY}
    path = registry_file()
    if path.is_file():
        try:
            entries.update({e["name"]: e for e in json.loads(path.read_text())})
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(path, f"is not a valid registry (a JSON list of entries with a name): {err}") from err
    return entries


def add_entry(entry: dict[str, Any]) -> None:
    """Register (or replace) an entry in the user's registry."""
    for key in ("name", "url"):
        if not entry.get(key):
            raise ConfigError(f"a registry entry needs a {key!r}")
    entries = registry()
    own = {k: v for k, v in entries.items() if k not in {e["name"] for e in BUILTIN_REGISTRY}}
    own[entry["name"]] = entry
    write_text_atomic(registry_file(), json.dumps(list(own.values()), indent=2) + "\n")


def resolve(source: str | os.PathLike[str], trust_unverified: bool = False) -> Path:
    """A local file or folder for `source` (downloading into the cache when needed)."""
    text = str(source)
    if text.startswith("hf://"):
        parts = text[len("hf://"):].split("/")
        if len(parts) < 3:
            raise ConfigError(f"{text}: expected hf://org/repo/file")
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]),
                                    local_files_only=os.environ.get("MAEKIT_OFFLINE") == "1"))
    if text.startswith(("http://", "https://")):
        url, _, fragment = text.partition("#")
        sha = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
        return download(url, sha, trust_unverified=trust_unverified)
    path = Path(text).expanduser()
    if path.exists():
        return path
    entries = registry()
    if text in entries:
        entry = entries[text]
        return download(entry["url"], entry.get("sha256"), entry.get("filename"), trust_unverified=trust_unverified)
    raise WeightsError(f"{text}: no such file, URL or registry name (known names: {', '.join(sorted(entries)) or 'none'})")


class PretrainedEncoder(nn.Module):
    """Adapter + encoder, ready to embed batches; `config` carries bands/modalities and statistics."""

    def __init__(self, adapter: DomainAdapter, encoder: TransformerStack, config: dict[str, Any]) -> None:
        super().__init__()
        self.adapter, self.encoder, self.config = adapter, encoder, config

    def forward(self, batch: dict[str, Any], return_prefix: bool = False) -> tuple[Tensor, Tokens]:
        """(B, N, D) features of every token (with the class token first when `return_prefix`),
        and the tokens (absent ones are not attended to)."""
        tokens = self.adapter.tokenize(batch)
        x, pos = self.adapter.embed_parts(tokens)
        x = self.encoder(x, tokens.present if tokens.may_be_absent else None, return_prefix=return_prefix, pos=pos)
        return x, tokens


def _convert_public(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """A public checkpoint layout (no maekit config) converted to the kit's, or None."""
    import warnings

    from maekit.weights.converters import convert_timm_vit, is_timm_vit
    from maekit.weights.loading import read_weights

    has_config = (path / "config.json").is_file() if path.is_dir() else path.with_name("config.json").is_file()
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin") or has_config:
        return None
    state, config = read_weights(path)
    if config is not None or not is_timm_vit(state):
        return None
    config, converted, report = convert_timm_vit(state)
    if report["unmatched"]:
        raise DataError(path, f"has tensors the timm-ViT converter cannot place: {report['unmatched'][:8]}")
    if report["dropped"]:
        warnings.warn(f"{path}: left out the classifier parts {report['dropped']}", stacklevel=3)
    return config, converted


def _build_adapter(spec: dict[str, Any]) -> DomainAdapter:
    module, _, name = spec["class_path"].rpartition(".")
    if not module.startswith("maekit."):
        raise ConfigError(f"refusing to build adapter {spec['class_path']!r}: only maekit adapters are loaded")
    cls = getattr(importlib.import_module(module), name)
    return cls(**spec.get("init_args", {}))  # bands/modalities beside init_args are descriptive only


def from_pretrained(source: str | os.PathLike[str], full: bool = False, trust_unverified: bool = False) -> nn.Module:
    """A pretrained encoder (`PretrainedEncoder`) or, with `full=True`, the whole `MaskedAutoencoder`.

    `source`: a registry name, an exported folder (model.safetensors + config.json), a Lightning
    checkpoint written by the kit, an http(s) URL (pin the hash with `#sha256=<hex>`), or
    `hf://org/repo/file`.
    """
    from safetensors.torch import load_file

    from maekit.weights.export import read_checkpoint

    path = resolve(source, trust_unverified)
    converted = _convert_public(path)
    if converted is not None:
        config, state = converted
    elif path.is_dir():
        config_path, weights_path = path / "config.json", path / "model.safetensors"
        if not (config_path.is_file() and weights_path.is_file()):
            raise DataError(path, "is not an exported model folder (needs config.json and model.safetensors)")
        config = json.loads(config_path.read_text())
        state = load_file(str(weights_path))
    elif path.suffix == ".safetensors":
        config_path = path.with_name("config.json")
        if not config_path.is_file():
            raise DataError(path, "has no config.json beside it to say how to rebuild the model")
        config, state = json.loads(config_path.read_text()), load_file(str(path))
    else:
        ckpt = read_checkpoint(path)
        config = dict(ckpt["maekit"])
        prefix = config.get("prefix", "")
        state = {k[len(prefix):].replace("._orig_mod.", "."): v for k, v in ckpt["state_dict"].items()
                 if k.startswith(prefix)}
    if "adapter" not in config:
        raise DataError(path, "has no maekit model description")
    adapter = _build_adapter(config["adapter"])
    if full:
        from maekit.pretrain import MaskedAutoencoder

        if "decoder_width" not in config:
            raise DataError(path, "holds an encoder only (a fine-tuning checkpoint); full=True needs a pretraining one")
        model: nn.Module = MaskedAutoencoder(adapter, config["size"], config["decoder_width"], config["decoder_depth"],
                                             config["decoder_heads"], decoder_reads=config.get("decoder_reads") or None)
        wanted = model.state_dict()
    else:
        spec = SIZES[config["size"]]
        adapter.build(spec.width)
        encoder = TransformerStack(spec.width, spec.depth, spec.heads, class_token=bool(config.get("class_token")))
        model = PretrainedEncoder(adapter, encoder, config)
        wanted = model.state_dict()
        state = {k: v for k, v in state.items() if k.startswith(("adapter.", "encoder."))}
        if config.get("group_embed") == "zero":  # layouts without group embeddings
            state["adapter.group_embed.weight"] = wanted["adapter.group_embed.weight"].zero_()
        if config.get("source_format"):  # converted: statistics come from the converter's adapter arguments
            for name in ("adapter.mean", "adapter.std", "adapter.scale", "adapter.offset"):
                if name in wanted:
                    state.setdefault(name, wanted[name])
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise DataError(path, f"does not match the model it describes: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state)
    model.config = config  # type: ignore[assignment]
    return model.eval()
