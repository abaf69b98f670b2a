"""`from_pretrained`: a ready encoder (or the full MAE) from a registry name, a local path, an
http(s) URL or `hf://org/repo/file`, with its bands/modalities and statistics attached.

Registry entries are JSON objects (name, url, sha256, domain, backbone, bands or modalities,
size, licence, source). The kit ships only entries it can load and verify; your own entries
live in `$MAEKIT_HOME/registry.json` (`maekit weights add`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maekit.backbones import SIZES, TransformerStack
from maekit.errors import ConfigError, DataError
from maekit.files import write_text_atomic
from maekit.tokens import DomainAdapter, Tokens
from maekit.weights.download import WeightsError, cache_root, download
from maekit.weights.formats import build_adapter, read_weights
from maekit.weights.loading import convert_public_weights, load_summary

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
     "bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"], "licence": "Apache-2.0", "format": "prithvi",
     "source": "ibm-nasa-geospatial/Prithvi-100M (HLS, 3 frames; loaded as one frame)",
     "url": "https://huggingface.co/ibm-nasa-geospatial/Prithvi-100M/resolve/main/Prithvi_100M.pt", "sha256": None},
    *[{"name": f"prithvi-eo-2-{variant.lower()}", "domain": "multispectral",
       "backbone": "vit-large" if variant.startswith("300M") else "vit-huge",
       "size": "large" if variant.startswith("300M") else "huge",
       "bands": ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"], "licence": "Apache-2.0",
       "format": "prithvi",
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


#: a commit hash: the only Hugging Face revision that cannot move
_COMMIT = re.compile(r"[0-9a-f]{40}")


def hf_url(source: str) -> tuple[str, str | None, str | None]:
    """(https URL, pinned sha256 or None, revision or None) of `hf://org/repo[@revision]/path[#sha256=hex]`.

    The file is fetched like any URL (`download`: the same sha256 pinning and
    `trust_unverified` rules, the same cache); `HF_ENDPOINT` changes the host as it does for
    huggingface_hub. A revision (a commit hash pins the file's version; a branch or tag can
    move) defaults to `main`."""
    text, _, fragment = source.partition("#")
    sha = _sha_fragment(source, fragment)
    parts = text[len("hf://"):].split("/")
    if len(parts) < 3 or not all(parts):
        raise ConfigError(f"{source}: expected hf://org/repo[@revision]/path/to/file")
    repo, _, revision = parts[1].partition("@")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{parts[0]}/{repo}/resolve/{revision or 'main'}/{'/'.join(parts[2:])}"
    return url, sha, revision or None


def _sha_fragment(source: str, fragment: str) -> str | None:
    if not fragment:
        return None
    if not fragment.startswith("sha256=") or not re.fullmatch(r"[0-9a-fA-F]{64}", fragment[len("sha256="):]):
        raise ConfigError(f"{source}: the part after '#' must be sha256=<64 hex digits>")
    return fragment[len("sha256="):].lower()


def resolve(source: str | os.PathLike[str], trust_unverified: bool = False) -> Path:
    """A local file or folder for `source` (downloading into the cache when needed). Every
    remote source (http(s), `hf://`, registry name) needs a pinned sha256 or `trust_unverified`."""
    text = str(source)
    if text.startswith("hf://"):
        url, sha, revision = hf_url(text)
        filename = text.partition("#")[0].rsplit("/", 1)[-1]
        if sha is None and not trust_unverified:
            pin = "" if revision and _COMMIT.fullmatch(revision) else " and a commit as @revision"
            raise WeightsError(f"{text}: no sha256 is pinned for it; add #sha256=<hex>{pin}, or pass "
                               "trust_unverified (--trust-unverified) to download it anyway")
        return download(url, sha, filename, trust_unverified=trust_unverified)
    if text.startswith(("http://", "https://")):
        url, _, fragment = text.partition("#")
        return download(url, _sha_fragment(text, fragment), trust_unverified=trust_unverified)
    path = Path(text).expanduser()
    if path.exists():
        return path
    entries = registry()
    if text in entries:
        entry = entries[text]
        return download(entry["url"], entry.get("sha256"), entry.get("filename"), trust_unverified=trust_unverified)
    raise WeightsError(f"{text}: no such file, URL or registry name (known names: {', '.join(sorted(entries)) or 'none'})")


class PretrainedEncoder(nn.Module):
    """Adapter + encoder, ready to embed batches; `config` carries bands/modalities and statistics.

    A classifier fine-tuned with global pooling (MAE / SatMAE `main_finetune.py`'s default) has
    no final norm over the tokens and a `fc_norm` after mean pooling: `fc_norm` is set, the
    encoder's final norm is the identity, and `pooled` gives `fc_norm(mean of patch tokens)` as
    the checkpoint was trained."""

    def __init__(self, adapter: DomainAdapter, encoder: TransformerStack, config: dict[str, Any],
                 fc_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.adapter, self.encoder, self.config = adapter, encoder, config
        self.fc_norm = fc_norm

    def forward(self, batch: dict[str, Any], return_prefix: bool = False) -> tuple[Tensor, Tokens]:
        """(B, N, D) features of every token (with the class token first when `return_prefix`),
        and the tokens (absent ones are not attended to)."""
        grid = self.config.get("position_grid")
        laid_out = (f"these {self.config.get('source_format')} weights' positions are laid out for a "
                    f"{'x'.join(map(str, grid or []))} patch grid")
        fix = "load them for this input size: from_pretrained(..., image_size=N) resizes the table as upstream does"
        try:
            tokens = self.adapter.tokenize(batch)
        except ConfigError as err:
            if grid is None or "position table" not in str(err):
                raise
            raise ConfigError(f"{err}: {laid_out}; {fix}") from err
        if grid is not None and getattr(tokens, "grid", None) is not None and list(tokens.grid) != list(grid):
            raise ConfigError(f"{laid_out}, this input makes {'x'.join(map(str, tokens.grid))}; {fix}")
        x, pos = self.adapter.embed_parts(tokens)
        x = self.encoder(x, tokens.present if tokens.may_be_absent else None, return_prefix=return_prefix, pos=pos)
        return x, tokens

    def pooled(self, batch: dict[str, Any]) -> Tensor:
        """(B, D) one feature per sample as the checkpoint was trained to give it: `fc_norm` of
        the mean over patch tokens (global-pool classifiers), else the class token's feature
        when there is one, else the mean over present tokens."""
        x, tokens = self(batch, return_prefix=True)
        prefix = self.encoder.num_prefix
        if self.fc_norm is None and prefix:
            return x[:, 0]
        x = x[:, prefix:]
        w = tokens.present.unsqueeze(-1).to(x.dtype) if tokens.may_be_absent else torch.ones_like(x[..., :1])
        mean = (x * w).sum(1) / w.sum(1).clamp(min=1.0)
        return self.fc_norm(mean) if self.fc_norm is not None else mean


def stack_from_config(config: dict[str, Any], class_token: bool | None = None, drop_path: float = 0.0) -> TransformerStack:
    """The encoder stack a model description asks for: a named size, or the explicit width,
    depth, heads, MLP ratio and LayerNorm eps a converter recorded."""
    spec = SIZES[config["size"]] if config.get("size") else None
    width = config.get("width") or spec.width  # type: ignore[union-attr]
    depth = config.get("depth") or spec.depth  # type: ignore[union-attr]
    heads = config.get("heads") or (spec.heads if spec else None)
    if heads is None:
        raise ConfigError(f"the weights do not record the number of attention heads, and width {width} / depth "
                          f"{depth} is no named size; pass heads=")
    return TransformerStack(width, depth, heads, mlp_ratio=float(config.get("mlp_ratio", 4.0)), drop_path=drop_path,
                            class_token=bool(config.get("class_token")) if class_token is None else class_token,
                            norm_eps=float(config.get("norm_eps", 1e-6)),
                            checkpoint_blocks=bool(config.get("checkpoint_blocks", False)))


#: `_build_adapter` was this module's name for it
_build_adapter = build_adapter


def from_pretrained(source: str | os.PathLike[str], full: bool = False, trust_unverified: bool = False,
                    **facts: Any) -> nn.Module:
    """A pretrained encoder (`PretrainedEncoder`) or, with `full=True`, the whole `MaskedAutoencoder`.

    `source`: a registry name, an exported folder (model.safetensors + config.json), a Lightning
    checkpoint written by the kit, a public checkpoint (timm / MAE, MONAI, Prithvi, SatMAE,
    BM-MAE, Point-MAE), an http(s) URL or `hf://org/repo[@commit]/file`; remote files need
    `#sha256=<hex>` or `trust_unverified`.

    `facts`: what a public file does not record, e.g. `heads=6` (a width/depth that is no named
    size), `groups=128, group_size=32` (fine-tuned Point-MAE), `num_frames=4` (Prithvi),
    `image_size=96` (the input size: the position table is resized as upstream does). A fact
    the file's converter does not take is refused by name; kit files record everything.
    """
    path = resolve(source, trust_unverified)
    wf = read_weights(path)
    if wf.config is None:
        converted = convert_public_weights(wf, facts)
        if converted is None:
            if wf.kind == "plain" and path.suffix == ".safetensors":
                raise DataError(path, "has no config.json beside it to say how to rebuild the model")
            raise DataError(path, "has no maekit model description and is not a public layout the kit converts "
                                  "(timm/MAE ViT, MONAI ViT/MAE, Prithvi, SatMAE, BM-MAE, Point-MAE)")
        config, state, report = converted
        warnings.warn(load_summary(path, len(state), [], report["dropped"] + report["not_mapped"], report["notes"]),
                      stacklevel=2)
    else:
        if facts:
            raise ConfigError(f"{path}: a maekit file records its model; {', '.join(sorted(facts))} apply only to "
                              "public checkpoints")
        config, state = dict(wf.config), wf.state
    return build_pretrained(config, state, full, path)


def build_pretrained(config: dict[str, Any], state: dict[str, Tensor], full: bool = False,
                     path: str | os.PathLike[str] = "<weights>") -> nn.Module:
    """The model a description + state dict stand for (what `from_pretrained` returns), e.g.
    from a converter called with explicit arguments: `build_pretrained(*convert_monai_vit(...)[:2])`."""
    path = Path(path)
    if "adapter" not in config:
        raise DataError(path, "has no maekit model description")
    from maekit.weights.converters import upgrade_legacy_bands

    config = upgrade_legacy_bands(config)
    adapter = build_adapter(config["adapter"])
    if full:
        from maekit.pretrain import MaskedAutoencoder

        if config.get("full_unsupported"):
            raise DataError(path, f"full=True is not possible for this {config.get('source_format')} checkpoint: "
                                  f"{config['full_unsupported']}")
        if "decoder_width" not in config:
            raise DataError(path, "holds an encoder only (a fine-tuning checkpoint); full=True needs a pretraining one")
        model: nn.Module = MaskedAutoencoder(adapter, config["size"], config["decoder_width"], config["decoder_depth"],
                                             config["decoder_heads"], decoder_reads=config.get("decoder_reads") or None,
                                             checkpoint_blocks=bool(config.get("checkpoint_blocks", False)))
        wanted = model.state_dict()
    else:
        try:
            encoder = stack_from_config(config)
        except ConfigError as err:
            raise DataError(path, str(err)) from err
        adapter.build(encoder.width)
        fc_norm = None
        if config.get("global_pool"):  # trained without a final token norm, with a norm after pooling
            encoder.norm = nn.Identity()
            fc_norm = nn.LayerNorm(encoder.width, eps=float(config.get("norm_eps", 1e-6)))
        model = PretrainedEncoder(adapter, encoder, config, fc_norm)
        wanted = model.state_dict()
        state = {k: v for k, v in state.items() if k.startswith(("adapter.", "encoder.", "fc_norm."))}
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
