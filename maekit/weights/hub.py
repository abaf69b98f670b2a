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
    *[{"name": f"mae-vit-{size}-imagenet-{kind}", "domain": "multispectral", "backbone": f"vit-{size}",
       "bands": ["R", "G", "B"], "size": size, "licence": "CC-BY-NC-4.0", "format": "mae",
       "source": f"facebookresearch/mae ({'encoder only' if kind == 'pretrain' else 'encoder + decoder'})",
       "url": f"https://dl.fbaipublicfiles.com/mae/{kind}/mae_{kind}_vit_{size}.pth", "sha256": None}
      for size in ("base", "large") for kind in ("pretrain", "visualize")],
    {"name": "prithvi-eo-1-100m", "domain": "multispectral", "backbone": "vit-base", "size": "base",
     "bands": ["B02", "B03", "B04", "B05", "B06", "B07"], "licence": "Apache-2.0", "format": "prithvi",
     "source": "ibm-nasa-geospatial/Prithvi-100M (HLS, 3 frames; loaded as one frame)",
     "url": "https://huggingface.co/ibm-nasa-geospatial/Prithvi-100M/resolve/main/Prithvi_100M.pt", "sha256": None},
    *[{"name": f"prithvi-eo-2-{variant.lower()}", "domain": "multispectral",
       "backbone": "vit-large" if variant.startswith("300M") else "vit-huge",
       "size": "large" if variant.startswith("300M") else "huge",
       "bands": ["B02", "B03", "B04", "B05", "B06", "B07"], "licence": "Apache-2.0", "format": "prithvi",
       "source": f"ibm-nasa-geospatial/Prithvi-EO-2.0-{variant} (HLS, 4 frames; loaded as one frame"
                 + ("; date/location scales not mapped)" if variant.endswith("TL") else ")"),
       "url": f"https://huggingface.co/ibm-nasa-geospatial/Prithvi-EO-2.0-{variant}/resolve/main/"
              f"Prithvi_EO_V2_{variant.replace('-', '_')}.pt", "sha256": None}
      for variant in ("300M", "300M-TL", "600M", "600M-TL")],
    {"name": "satmae-vit-large-sentinel2", "domain": "multispectral", "backbone": "vit-large", "size": "large",
     "bands": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
     "groups": [["B02", "B03", "B04", "B08"], ["B05", "B06", "B07", "B8A"], ["B11", "B12"]],
     "licence": "unspecified upstream (see sustainlab-group/SatMAE)", "format": "satmae-group",
     "source": "SatMAE group-channel ViT-L/8, fMoW-Sentinel, 200 epochs (Zenodo 7325339)",
     "url": "https://zenodo.org/record/7325339/files/pretrain-vit-large-e199.pth", "sha256": None},
    {"name": "bm-mae-brats2021", "domain": "mri", "backbone": "vit-base", "size": "base",
     "modalities": ["t1", "t1ce", "t2", "flair"], "licence": "unspecified upstream (see the luklebigbosse/BM-MAE model card)",
     "format": "bm-mae", "source": "BM-MAE (Robinet et al. 2025), BraTS 2021, 128^3 crops, 16^3 patches",
     "url": "https://huggingface.co/luklebigbosse/BM-MAE/resolve/main/bmmae.pth", "sha256": None},
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
    from maekit.weights.loading import convert_public_weights, read_weights

    has_config = (path / "config.json").is_file() if path.is_dir() else path.with_name("config.json").is_file()
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin") or has_config:
        return None
    state, config = read_weights(path)
    if config is not None:
        return None
    return convert_public_weights(state, path)


def stack_from_config(config: dict[str, Any], class_token: bool | None = None, drop_path: float = 0.0) -> TransformerStack:
    """The encoder stack a model description asks for: a named size, or the explicit width,
    depth, heads, MLP ratio and LayerNorm eps a converter recorded."""
    spec = SIZES[config["size"]] if config.get("size") else None
    width = config.get("width") or spec.width  # type: ignore[union-attr]
    depth = config.get("depth") or spec.depth  # type: ignore[union-attr]
    heads = config.get("heads") or (spec.heads if spec else width // 64)
    return TransformerStack(width, depth, heads, mlp_ratio=float(config.get("mlp_ratio", 4.0)), drop_path=drop_path,
                            class_token=bool(config.get("class_token")) if class_token is None else class_token,
                            norm_eps=float(config.get("norm_eps", 1e-6)))


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

    from maekit.weights.export import read_checkpoint, refuse_sharded_checkpoint

    path = resolve(source, trust_unverified)
    converted = _convert_public(path)
    if converted is not None:
        config, state = converted
    elif path.is_dir():
        refuse_sharded_checkpoint(path)
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
    return build_pretrained(config, state, full, path)


def build_pretrained(config: dict[str, Any], state: dict[str, Tensor], full: bool = False,
                     path: str | os.PathLike[str] = "<weights>") -> nn.Module:
    """The model a description + state dict stand for (what `from_pretrained` returns), e.g.
    from a converter called with explicit arguments: `build_pretrained(*convert_monai_vit(...)[:2])`."""
    path = Path(path)
    if "adapter" not in config:
        raise DataError(path, "has no maekit model description")
    adapter = _build_adapter(config["adapter"])
    if full:
        from maekit.pretrain import MaskedAutoencoder

        if config.get("full_unsupported"):
            raise DataError(path, f"full=True is not possible for this {config.get('source_format')} checkpoint: "
                                  f"{config['full_unsupported']}")
        if "decoder_width" not in config:
            raise DataError(path, "holds an encoder only (a fine-tuning checkpoint); full=True needs a pretraining one")
        model: nn.Module = MaskedAutoencoder(adapter, config["size"], config["decoder_width"], config["decoder_depth"],
                                             config["decoder_heads"], decoder_reads=config.get("decoder_reads") or None)
        wanted = model.state_dict()
    else:
        encoder = stack_from_config(config)
        adapter.build(encoder.width)
        model = PretrainedEncoder(adapter, encoder, config)
        wanted = model.state_dict()
        state = {k: v for k, v in state.items() if k.startswith(("adapter.", "encoder."))}
        if config.get("group_embed") == "zero" and "adapter.group_embed.weight" not in state:  # layouts without one
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
