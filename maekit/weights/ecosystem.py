"""Exports to the ecosystem's own formats: a timm `VisionTransformer` and a MONAI `ViT`.

`maekit export CKPT OUT --format timm|monai` writes a folder that the other library loads with
its own code, no maekit needed:

- timm (`export_timm`): `model.safetensors` (timm's key names) and `config.json` in timm's hub
  layout (`architecture`, `model_args`, `pretrained_cfg`), so either of
  `timm.create_model("local-dir:OUT", pretrained=True)` or
  `timm.create_model(cfg["architecture"], pretrained=True, pretrained_cfg_overlay=dict(file="OUT/model.safetensors"),
  **cfg["model_args"])` builds the encoder (for terratorch / segmentation_models_pytorch backbones).
- MONAI (`export_monai`): `model.safetensors` with `monai.networks.nets.ViT` names and
  `config.json` holding the `ViT` / `UNETR` arguments, so `UNETR(...).vit.load_state_dict(sd)`
  takes it.

What maekit adds to a plain ViT is folded into the weights: the band-group / modality
embedding (one group: the same vector on every token) goes into the patch projection's bias,
the position code (sin-cos, or the learned table) is written out as the position table for
the export's input size, and a class token's own position becomes the class slot of timm's
`pos_embed`. Key names come from the converters' tables (`maekit.weights.converters`),
inverted, so the correspondence is written once.

Models with no equivalent are refused with the reason: several band groups (several tokens per
patch, each with its own projection), several modalities (MONAI mixes channels in one
projection), Point-MAE and skeleton tokens (not patches of a grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from maekit.errors import ConfigError, DataError
from maekit.weights.formats import write_weights_folder
from maekit.weights.converters import MONAI_BLOCK_TABLE, TIMM_VIT_TABLE, invert_table, rename

__all__ = ["export_monai", "export_timm", "match_layer_norm_eps", "to_monai", "to_timm"]

#: maekit names -> timm `VisionTransformer` names (the converter's table, inverted)
TO_TIMM = invert_table(TIMM_VIT_TABLE)
#: timm `Block` names -> MONAI `TransformerBlock` names (the converter's table, inverted)
TO_MONAI_BLOCK = invert_table(MONAI_BLOCK_TABLE)
#: timm's named ViTs by (width, depth, heads)
_TIMM_SIZES = {(192, 12, 3): "tiny", (384, 12, 6): "small", (768, 12, 12): "base", (1024, 24, 16): "large",
               (1280, 32, 16): "huge"}


def _size(image_size: int | Sequence[int], dims: int) -> tuple[int, ...]:
    size = (int(image_size),) * dims if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != dims:
        raise ConfigError(f"image_size {image_size} must give {dims} edges (or one for all)")
    return size


def _refuse_unless_patch_grid(model: nn.Module, target: str, wanted: str) -> Any:
    """The model's adapter when it is `wanted` (a class name) with one channel group; else a
    ConfigError saying why this model has no `target` equivalent."""
    adapter = getattr(model, "adapter", None)
    kind = type(adapter).__name__
    if kind == "PointCloudAdapter":
        raise ConfigError(f"a Point-MAE encoder has no {target} equivalent: its tokens are groups of points "
                          "(farthest-point centres + kNN neighbourhoods through a mini-PointNet), not patches of a "
                          "grid, and its position is an MLP of each centre added before every block")
    if kind != wanted:
        other = {"MultispectralAdapter": "timm", "VolumeAdapter": "monai"}.get(kind)
        hint = f"; use --format {other}" if other else ""
        raise ConfigError(f"a {kind} encoder has no {target} equivalent: {target} export takes a {wanted}{hint}")
    if adapter.num_groups != 1:
        if kind == "MultispectralAdapter":
            raise ConfigError(
                f"this encoder has {adapter.num_groups} band groups {adapter.groups}: each patch becomes one token "
                "per group, each group with its own projection and group embedding, so a sequence is "
                f"{adapter.num_groups}x as long as a ViT's; a timm VisionTransformer has one token per patch over "
                "all bands, so there is no equivalent. Train with one group (groups: [[all bands]], e.g. the rgb "
                "preset) to export to timm, or use the maekit format")
        raise ConfigError(
            f"this encoder has {adapter.num_groups} modalities {adapter.channels}: maekit makes one token per "
            "modality per patch (each modality its own projection; missing modalities are absent tokens), a MONAI "
            "ViT mixes all channels of a patch in one projection into one token, so there is no equivalent. Train "
            "with one modality to export to MONAI, or use the maekit format")
    if getattr(model, "fc_norm", None) is not None:
        raise ConfigError("this encoder came from a classifier fine-tuned with global pooling (fc_norm, no final "
                          "norm); export its original checkpoint instead")
    return adapter


def _folded_embedding(adapter: Any, grid: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """(patch weight (D, C_model, *p) in the model's channel order, bias with the group
    embedding folded in, position table (prod(grid), D) in row-major patch order)."""
    p, dims = adapter.patch_size, adapter.spatial_dims
    index = adapter.group_index[0]
    linear = adapter.patch_embed[0]
    width = linear.weight.shape[0]
    weight = linear.weight.detach().reshape(width, len(index), *([p] * dims))
    full = weight.new_zeros(width, len(adapter.channels), *([p] * dims))
    full[:, index] = weight  # the group's channel order -> the model's
    bias = linear.bias.detach() + adapter.group_embed.weight.detach()[0]
    axes = torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")
    coords = torch.stack([a.flatten() for a in axes], -1).float()
    if adapter.position == "learned":
        if any(n > adapter.max_grid for n in grid):
            raise ConfigError(f"a {'x'.join(map(str, grid))} patch grid does not fit the learned position table of "
                              f"{adapter.max_grid} per axis; choose a smaller image_size")
        pos = adapter.pos_table(coords).detach()
    else:
        pos = adapter.encode_position(coords, width).detach()
    return full, bias, pos.to(weight.dtype)


def _encoder_state(model: nn.Module, table: list[tuple[str, str]], skip: Sequence[str]) -> dict[str, Tensor]:
    """The encoder's tensors renamed by `table`; a name the table does not know is an error."""
    encoder = {f"encoder.{k}": v.detach() for k, v in model.encoder.state_dict().items() if f"encoder.{k}" not in skip}
    state, unmatched = rename(encoder, table)
    if unmatched:
        raise ConfigError(f"encoder tensors with no counterpart in the target layout: {unmatched[:8]}")
    return state


def _check_stack(model: nn.Module, target: str) -> Any:
    encoder = getattr(model, "encoder", None)
    from maekit.backbones import TransformerStack

    if not isinstance(encoder, TransformerStack):
        raise ConfigError(f"{target} export needs a maekit TransformerStack encoder, got {type(encoder).__name__}")
    if not encoder.qkv_bias:
        raise ConfigError(f"{target} export: this encoder's attention has no qkv bias")
    return encoder


# ----------------------------------------------------------------------------------- timm
def to_timm(model: nn.Module, image_size: int | Sequence[int]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, config.json content) of a timm `VisionTransformer` equal to `model` (a
    `PretrainedEncoder` of a one-group `MultispectralAdapter`) on inputs of `image_size`.

    timm's ViT takes all model bands in the model's order, normalised as timm does:
    `(x - mean) / std` with `pretrained_cfg` mean/std, where x is in the model's physical units
    (`raw * scale + offset`; for 8-bit data with scale 1/255 that is timm's usual 0-1 input).
    `config.json` also records the per-band mean/std in stored units (`raw_mean`, `raw_std`)
    for normalising raw values directly."""
    adapter = _refuse_unless_patch_grid(model, "timm", "MultispectralAdapter")
    encoder = _check_stack(model, "timm")
    if abs(encoder.norm_eps - 1e-6) > 1e-12:
        raise ConfigError(f"this encoder's LayerNorm eps is {encoder.norm_eps}; timm's ViT uses 1e-6 and its config "
                          "cannot say otherwise")
    size = _size(image_size, 2)
    p = adapter.patch_size
    if any(s % p for s in size):
        raise ConfigError(f"image_size {size} is not a multiple of the patch size {p}")
    grid = tuple(s // p for s in size)
    weight, bias, pos = _folded_embedding(adapter, grid)
    has_cls = encoder.num_prefix > 0
    state = _encoder_state(model, TO_TIMM, skip=("encoder.cls_pos",))
    if has_cls:  # timm adds pos_embed[:, 0] to its class token, as maekit adds cls_pos
        pos = torch.cat([encoder.cls_pos.detach()[0].to(pos.dtype), pos], 0)
    state.update({"patch_embed.proj.weight": weight, "patch_embed.proj.bias": bias, "pos_embed": pos[None]})
    width, depth, heads = encoder.width, encoder.depth, encoder.heads
    name = _TIMM_SIZES.get((width, depth, heads), "base")
    architecture = f"vit_{name}_patch16_224"
    model_args = {"img_size": list(size), "patch_size": p, "in_chans": len(adapter.channels), "embed_dim": width,
                  "depth": depth, "num_heads": heads, "mlp_ratio": encoder.mlp_ratio, "qkv_bias": True,
                  "class_token": has_cls, "no_embed_class": False, "global_pool": "token" if has_cls else "avg",
                  "fc_norm": False, "num_classes": 0}
    mean, std = adapter.mean.tolist(), adapter.std.tolist()
    scale, offset = adapter.scale.tolist(), adapter.offset.tolist()
    pretrained_cfg = {"architecture": architecture, "tag": "maekit", "num_classes": 0,
                      "input_size": [len(adapter.channels), *size], "fixed_input_size": True,
                      "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center", "mean": mean, "std": std,
                      "first_conv": "patch_embed.proj", "classifier": "head"}
    config = {"architecture": architecture, "num_classes": 0, "num_features": width, "model_args": model_args,
              "pretrained_cfg": pretrained_cfg,
              "maekit": {"bands": list(adapter.channels), "patch_size": p, "image_size": list(size),
                         "input": "bands in this order, in physical units (raw * scale + offset), then (x - mean) / "
                                  "std with pretrained_cfg's mean/std; equivalently (raw - raw_mean) / raw_std",
                         "scale": scale, "offset": offset,
                         "raw_mean": [(m - o) / s for m, o, s in zip(mean, offset, scale)],
                         "raw_std": [d / abs(s) for d, s in zip(std, scale)],
                         "pooling": "class token" if has_cls else "mean over patch tokens (global_pool='avg')",
                         "folded": ["group embedding -> patch_embed.proj.bias",
                                    f"{adapter.position} positions for a {grid[0]}x{grid[1]} patch grid -> pos_embed"],
                         "not_representable": "nodata pixels (maekit drops their patches from attention); give "
                                              "timm fully valid tiles"}}
    if any(s < 0 for s in scale):
        raise ConfigError(f"negative band scale {scale} cannot be expressed as timm's mean/std")
    return state, config


# ---------------------------------------------------------------------------------- MONAI
def to_monai(model: nn.Module, image_size: int | Sequence[int],
             proj_type: Literal["conv", "perceptron"] = "conv") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, config.json content) of a `monai.networks.nets.ViT` equal to `model` (a
    `PretrainedEncoder` of a one-modality `VolumeAdapter`) on volumes of `image_size`.

    The ViT must be built with `qkv_bias=True` and the recorded sizes (config `vit_args`;
    `unetr_args` for `UNETR`, which also needs depth 12 and 16^3 patches). MONAI's LayerNorms
    use eps 1e-5 and maekit's 1e-6: `match_layer_norm_eps(vit, 1e-6)` makes the features equal;
    without it they differ in the last digits (a relative 1e-5 or so)."""
    adapter = _refuse_unless_patch_grid(model, "MONAI", "VolumeAdapter")
    encoder = _check_stack(model, "MONAI")
    if encoder.num_prefix:
        raise ConfigError("this encoder has a class token: MONAI's ViT adds no position to its class token and "
                          "UNETR's ViT has none, so it has no exact equivalent")
    size = _size(image_size, 3)
    p = adapter.patch_size
    if any(s % p for s in size):
        raise ConfigError(f"image_size {size} is not a multiple of the patch size {p}")
    grid = tuple(s // p for s in size)
    weight, bias, pos = _folded_embedding(adapter, grid)
    timm_names = _encoder_state(model, TO_TIMM, skip=())
    state: dict[str, Tensor] = {}
    for key, value in timm_names.items():
        if key.startswith("blocks."):
            number, _, rest = key[len("blocks."):].partition(".")
            renamed, unmatched = rename({rest: value}, TO_MONAI_BLOCK)
            if unmatched:
                raise ConfigError(f"encoder tensor {key} has no MONAI counterpart")
            state.update({f"blocks.{number}.{k}": v for k, v in renamed.items()})
        else:
            state[key] = value  # norm.weight / norm.bias keep their names
    width = encoder.width
    for i in range(encoder.depth):  # always in a MONAI TransformerBlock, used only with cross-attention
        state[f"blocks.{i}.norm_cross_attn.weight"] = torch.ones(width)
        state[f"blocks.{i}.norm_cross_attn.bias"] = torch.zeros(width)
    if proj_type == "conv":
        state["patch_embedding.patch_embeddings.weight"] = weight
        state["patch_embedding.patch_embeddings.bias"] = bias
    elif proj_type == "perceptron":  # MONAI flattens a patch as (p1 p2 p3 c)
        state["patch_embedding.patch_embeddings.1.weight"] = weight.permute(0, 2, 3, 4, 1).reshape(width, -1)
        state["patch_embedding.patch_embeddings.1.bias"] = bias
    else:
        raise ConfigError(f"proj_type must be 'conv' or 'perceptron', got {proj_type!r}")
    state["patch_embedding.position_embeddings"] = pos[None]
    mlp_dim = int(round(encoder.mlp_ratio * width))
    vit_args = {"in_channels": 1, "img_size": list(size), "patch_size": p, "hidden_size": width, "mlp_dim": mlp_dim,
                "num_layers": encoder.depth, "num_heads": encoder.heads, "proj_type": proj_type,
                "pos_embed_type": "learnable", "classification": False, "spatial_dims": 3, "qkv_bias": True}
    config = {"format": "monai-vit", "vit_args": vit_args,
              "unetr_args": {"in_channels": 1, "img_size": list(size), "hidden_size": width, "mlp_dim": mlp_dim,
                             "num_heads": encoder.heads, "proj_type": proj_type, "spatial_dims": 3, "qkv_bias": True},
              "unetr_compatible": encoder.depth == 12 and p == 16,
              "layer_norm_eps": encoder.norm_eps,
              "maekit": {"modalities": list(adapter.channels), "patch_size": p, "image_size": list(size),
                         "input": "volumes normalised per modality as for training (MONAI transforms); maekit "
                                  "applies no statistics of its own",
                         "folded": ["modality embedding -> patch projection bias",
                                    f"{adapter.position} positions for a {'x'.join(map(str, grid))} patch grid -> "
                                    "position_embeddings"],
                         "not_representable": "absent tokens (maekit can leave patches out of attention)"}}
    if not config["unetr_compatible"]:
        config["unetr_note"] = (f"UNETR builds a ViT of depth 12 on 16^3 patches; this encoder has depth "
                                f"{encoder.depth} and patch {p}: use monai.networks.nets.ViT")
    return state, config


def match_layer_norm_eps(module: nn.Module, eps: float) -> nn.Module:
    """Set every LayerNorm of `module` (a MONAI ViT or UNETR) to `eps` (the exported encoder's
    `layer_norm_eps`, MONAI builds them with 1e-5); returns `module`."""
    for layer in module.modules():
        if isinstance(layer, nn.LayerNorm):
            layer.eps = eps
    return module


# --------------------------------------------------------------------------------- folders
def _load(source: str | Path) -> nn.Module:
    from maekit.weights.hub import from_pretrained

    model = from_pretrained(source)
    if not hasattr(model, "adapter") or not hasattr(model, "encoder"):
        raise DataError(source, "does not hold an encoder")
    return model


def _default_size(model: nn.Module, source: str | Path, image_size: int | Sequence[int] | None) -> Any:
    if image_size is not None:
        return image_size
    adapter = model.adapter
    if getattr(adapter, "position", None) == "learned":
        return adapter.max_grid * adapter.patch_size
    raise ConfigError(f"{source}: the encoder's sin-cos positions fit any input size; give the size to export for "
                      "(--image-size N, e.g. the training crop)")


def _write_folder(out_dir: str | Path, state: dict[str, Tensor], config: dict[str, Any], card: str) -> Path:
    tensors = {k: v.detach().contiguous().float() for k, v in state.items()}
    return write_weights_folder(out_dir, tensors, config, card, "pt")


def export_timm(source: str | Path, out_dir: str | Path, image_size: int | Sequence[int] | None = None) -> Path:
    """Write a timm folder (`model.safetensors` + `config.json` + README) for the encoder of
    `source` (a kit checkpoint or exported folder); see `to_timm`. `image_size` defaults to
    the learned position table's extent; sin-cos models need it."""
    model = _load(source)
    state, config = to_timm(model, _default_size(model, source, image_size))
    args = config["model_args"]
    card = "\n".join([
        f"# {Path(out_dir).name} (timm)", "",
        f"A maekit encoder exported as a timm `VisionTransformer` ({args['embed_dim']} wide, {args['depth']} blocks, "
        f"{args['num_heads']} heads, patch {args['patch_size']}, input {args['in_chans']} bands "
        f"{config['maekit']['bands']} at {args['img_size']}).", "",
        "```python", "import timm", f"model = timm.create_model(\"local-dir:{Path(out_dir).name}\", pretrained=True)",
        "# or: cfg = json.load(open('config.json'))", "# timm.create_model(cfg['architecture'], pretrained=True, "
        "pretrained_cfg_overlay=dict(file='model.safetensors'), **cfg['model_args'])", "```", "",
        f"Inputs: {config['maekit']['input']}.", f"Features: {config['maekit']['pooling']}.",
        f"Not representable: {config['maekit']['not_representable']}.", ""])
    return _write_folder(out_dir, state, config, card)


def export_monai(source: str | Path, out_dir: str | Path, image_size: int | Sequence[int] | None = None,
                 proj_type: Literal["conv", "perceptron"] = "conv") -> Path:
    """Write a MONAI folder (`model.safetensors` + `config.json` + README) for the encoder of
    `source`; see `to_monai`."""
    model = _load(source)
    state, config = to_monai(model, _default_size(model, source, image_size), proj_type)
    args = config["vit_args"]
    use = (["from monai.networks.nets import UNETR", "net = UNETR(out_channels=N, **cfg['unetr_args'])",
            "net.vit.load_state_dict(load_file('model.safetensors'))"] if config["unetr_compatible"] else
           ["from monai.networks.nets import ViT", "vit = ViT(**cfg['vit_args'])",
            "vit.load_state_dict(load_file('model.safetensors'))"])
    card = "\n".join([
        f"# {Path(out_dir).name} (MONAI)", "",
        f"A maekit volume encoder exported as a MONAI `ViT` ({args['hidden_size']} wide, {args['num_layers']} blocks, "
        f"{args['num_heads']} heads, {args['patch_size']}^3 patches, input {args['img_size']}).", "",
        "```python", "import json", "from safetensors.torch import load_file",
        "cfg = json.load(open('config.json'))", *use, "```", "",
        f"Inputs: {config['maekit']['input']}.", f"LayerNorm eps: {config['layer_norm_eps']} (MONAI builds 1e-5; "
        "`maekit.weights.match_layer_norm_eps(net, eps)` makes the features identical).",
        *([config["unetr_note"]] if "unetr_note" in config else []), ""])
    return _write_folder(out_dir, state, config, card)
