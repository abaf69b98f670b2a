"""Converters from public checkpoint layouts to maekit's, with explicit key tables.

Each converter returns the model description that `from_pretrained` rebuilds (`adapter` spec,
`size`, `class_token`, and the stack's `heads`, `mlp_ratio`, `norm_eps`), the converted state
dict, and a report: `dropped` (parts the encoder does not use: classifier heads, MAE decoders),
`not_mapped` (encoder parts with no maekit counterpart, e.g. Prithvi's date/location scales;
they are warned about) and `unmatched` (keys no table entry knows: conversion fails on them).
Shapes are checked; nothing is dropped silently.

Layouts (`detect_format` tells them apart):
- `timm-vit`: timm `VisionTransformer` and facebookresearch/mae `.pth` files (`{"model": ...}`,
  encoder-only or full MAE with `decoder_*` / `mask_token`).
- `monai-vit`, `monai-mae`: `monai.networks.nets.ViT` / `MaskedAutoEncoderViT`, 2D or 3D.
- `prithvi`: Prithvi-EO 1.0 (`Prithvi_100M.pt`, unprefixed) and 2.0 (`encoder.` / `decoder.`).
- `satmae-group`: SatMAE's group-channel ViT (`patch_embed.{i}.proj`, `channel_embed`).
- `bm-mae`: BM-MAE (`tokenizers.{modality}.patch_embedding.*` into a MONAI-block ViT).
- `point-mae`: Point-MAE pretraining (`{"base_model": ...}`, `MAE_encoder.*`) and fine-tuned
  (`encoder.*`, `blocks.blocks.*`, `cls_token`) checkpoints.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from maekit.backbones import SIZES
from maekit.domains.multispectral.spec import HLS
from maekit.errors import ConfigError

Converted = tuple[dict[str, Any], dict[str, Tensor], dict[str, list[str]]]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

#: timm `Block` stacks (timm ViT, facebookresearch/mae, Prithvi, SatMAE) -> maekit, one entry per tensor
TIMM_VIT_TABLE: list[tuple[str, str]] = [
    (r"cls_token", "encoder.cls_token"),
    (r"patch_embed\.proj\.bias", "adapter.patch_embed.0.bias"),
    (r"blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"encoder.blocks.\1.\2.\3"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"encoder.blocks.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.blocks.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"encoder.norm.\1"),
]
#: handled specially: reshaped (patch projection) or split (position table with the class slot)
TIMM_VIT_SPECIAL = ("patch_embed.proj.weight", "pos_embed")
#: parts of a classifier the encoder does not use
TIMM_VIT_DROPPED = re.compile(r"^(head|fc_norm|head_drop)\.")
#: an MAE decoder (facebookresearch/mae, Prithvi, SatMAE): not part of the encoder
MAE_DECODER = re.compile(r"^(decoder_|decoder\.|mask_token$)")

#: MONAI `TransformerBlock` (SABlock + MLPBlock) -> timm `Block` names
MONAI_BLOCK_TABLE: list[tuple[str, str]] = [
    (r"(norm1|norm2)\.(weight|bias)", r"\1.\2"),
    (r"attn\.qkv\.(weight|bias)", r"attn.qkv.\1"),
    (r"attn\.out_proj\.(weight|bias)", r"attn.proj.\1"),
    (r"mlp\.linear1\.(weight|bias)", r"mlp.fc1.\1"),
    (r"mlp\.linear2\.(weight|bias)", r"mlp.fc2.\1"),
]
#: always present in a MONAI TransformerBlock (or stale in checkpoints of older MONAI versions),
#: used only with cross-attention, which ViTs do not have
MONAI_UNUSED = re.compile(r"norm_cross_attn\.(weight|bias)|cross_attn\..+")

#: Prithvi's six HLS bands (names as in the Prithvi-EO-2.0 `config.json`) and statistics
#: Prithvi's six HLS bands, named as the `hls` preset (and terratorch) name them; the HLS L30
#: numbers B02..B07 that earlier conversions wrote are the preset's aliases
PRITHVI_BANDS = list(HLS.bands)
PRITHVI_LEGACY_BANDS = list(HLS.band_aliases)
PRITHVI_V1_MEAN = [775.0, 1081.0, 1229.0, 2497.0, 2204.0, 1611.0]
PRITHVI_V1_STD = [1282.0, 1270.0, 1399.0, 1368.0, 1292.0, 1155.0]
PRITHVI_V2_MEAN = [1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0]
PRITHVI_V2_STD = [2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0]

#: SatMAE multispectral (fMoW-Sentinel, `--dropped_bands 0 9 10`): 10 bands in 3 groups
SATMAE_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
SATMAE_GROUPS = [["B02", "B03", "B04", "B08"], ["B05", "B06", "B07", "B8A"], ["B11", "B12"]]
#: per-band mean/std of SatMAE's `SentinelIndividualImageDataset` (same band order)
SATMAE_MEAN = [1184.3824625, 1120.77120066, 1136.26026392, 1263.73947144, 1645.40315151, 1846.87040806,
               1762.59530783, 1972.62420416, 1732.16362238, 1247.91870117]
SATMAE_STD = [650.2842772, 712.12507725, 965.23119807, 948.9819932, 1108.06650639, 1258.36394548,
              1233.1492281, 1364.38688993, 1310.36996126, 1087.6020813]

BRATS_MODALITIES = ["t1", "t1ce", "t2", "flair"]


# --------------------------------------------------------------------------------- helpers
def unwrap(state: dict[str, Any]) -> dict[str, Tensor]:
    """The tensors of a checkpoint that wraps them (`{"model": ...}` as facebookresearch/mae,
    SatMAE and Prithvi training scripts save, or `{"state_dict": ...}`)."""
    for key in ("model", "state_dict", "module", "base_model"):
        inner = state.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            return inner
    return state


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Drop `prefix` from every key that has it (others unchanged)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def _depth(state: dict[str, Tensor], prefix: str = "blocks") -> int:
    return len({int(m.group(1)) for k in state if (m := re.match(rf"{prefix}\.(\d+)\.", k))})


def _stack(width: int, depth: int, mlp_hidden: int, norm_eps: float, heads: int | None) -> dict[str, Any]:
    """The stack part of a converted config: the named size with this width and depth (used by
    the fine-tuning tasks), heads (shapes do not tell them: the named size's unless given),
    MLP ratio and LayerNorm eps."""
    size = next((name for name, s in SIZES.items() if s.width == width and s.depth == depth), None)
    if heads is None:
        if size is None:
            raise ConfigError(f"no maekit size has width {width} and depth {depth}; pass heads= to the converter")
        heads = SIZES[size].heads
    if width % heads:
        raise ConfigError(f"width {width} is not divisible by {heads} heads")
    return {"size": size, "width": width, "depth": depth, "heads": heads, "mlp_ratio": mlp_hidden / width,
            "norm_eps": norm_eps}


def _expect(name: str, value: Tensor, shape: tuple[int, ...]) -> Tensor:
    if tuple(value.shape) != shape:
        raise ConfigError(f"{name} has shape {tuple(value.shape)}, expected {shape}")
    return value


def _apply_table(state: dict[str, Tensor], table: list[tuple[str, str]], out: dict[str, Tensor],
                 skip: Callable[[str], bool]) -> list[str]:
    """Rename by `table` into `out`; returns the keys nothing matched (and `skip` did not claim)."""
    unmatched = []
    for key, value in state.items():
        if skip(key):
            continue
        for pattern, target in table:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, target, key)] = value
                break
        else:
            unmatched.append(key)
    return unmatched


def _capturing_groups(pattern: str) -> list[tuple[int, int]]:
    """(start, end) spans of the capturing groups of a key-table pattern (unnested, no `(?`)."""
    spans: list[tuple[int, int]] = []
    start = None
    for i, ch in enumerate(pattern):
        escaped = i > 0 and pattern[i - 1] == "\\"
        if ch == "(" and not escaped:
            if start is not None or pattern[i + 1:i + 2] == "?":
                raise ValueError(f"key-table pattern {pattern!r} has nested or special groups")
            start = i
        elif ch == ")" and not escaped:
            if start is None:
                raise ValueError(f"unbalanced key-table pattern {pattern!r}")
            spans.append((start, i + 1))
            start = None
    return spans


def invert_table(table: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The same renaming the other way: (pattern, replacement) entries that map every key the
    table produces back to the key it came from (used by the exports to timm and MONAI, so the
    key correspondence is written once). Patterns may hold literal text, escaped dots and
    unnested capturing groups; every group must be used in the replacement."""
    inverted = []
    for pattern, target in table:
        spans = _capturing_groups(pattern)
        parts = re.split(r"\\(\d)", target)  # literal, group number, literal, ...
        order = [int(n) for n in parts[1::2]]
        if sorted(order) != list(range(1, len(spans) + 1)):
            raise ValueError(f"key-table entry {pattern!r} -> {target!r} cannot be inverted: each group once")
        inverse_pattern = "".join(re.escape(p) if i % 2 == 0 else pattern[slice(*spans[int(p) - 1])]
                                  for i, p in enumerate(parts))
        pieces, last = [], 0
        for j, (start, end) in enumerate(spans, start=1):
            pieces += [pattern[last:start], f"\\g<{order.index(j) + 1}>"]
            last = end
        pieces.append(pattern[last:])
        literal = [p for k, p in enumerate(pieces) if k % 2 == 0]
        if any(not re.fullmatch(r"(?:[A-Za-z0-9_]|\\\.)*", p) for p in literal):
            raise ValueError(f"key-table pattern {pattern!r} has regex syntax outside its groups")
        inverse_target = "".join(p.replace("\\.", ".") if k % 2 == 0 else p for k, p in enumerate(pieces))
        inverted.append((inverse_pattern, inverse_target))
    return inverted


def rename(state: dict[str, Tensor], table: list[tuple[str, str]]) -> tuple[dict[str, Tensor], list[str]]:
    """`state` renamed by `table` (first matching entry wins) and the keys no entry matched."""
    out: dict[str, Tensor] = {}
    unmatched = _apply_table(state, table, out, lambda key: False)
    return out, unmatched


def _grid_table(pos: Tensor, grid: tuple[int, ...]) -> tuple[Tensor, int]:
    """A (G^dims, D) learned table with max_grid G = max(grid) holding the (prod(grid), D)
    row-major positions `pos`; slots outside a non-square grid stay zero (never looked up)."""
    side = max(grid)
    if all(g == side for g in grid):
        return pos, side
    table = pos.new_zeros((side,) * len(grid) + (pos.shape[-1],))
    table[tuple(slice(0, g) for g in grid)] = pos.reshape(*grid, -1)
    return table.reshape(-1, pos.shape[-1]), side


def _square_grid(tokens: int, dims: int, what: str) -> tuple[int, ...]:
    side = round(tokens ** (1 / dims))
    if side**dims != tokens:
        raise ConfigError(f"{what} has {tokens} positions, not a {'square' if dims == 2 else 'cubic'} grid; "
                          "pass grid= to the converter")
    return (side,) * dims


def _timm_blocks(state: dict[str, Tensor], out: dict[str, Tensor], dropped: list[str],
                 not_mapped: list[str], extra_special: tuple[str, ...] = ()) -> list[str]:
    """Blocks, final norm and class token of a timm-block checkpoint; returns unmatched keys."""
    def skip(key: str) -> bool:
        if key in TIMM_VIT_SPECIAL or key in extra_special:
            return True
        if TIMM_VIT_DROPPED.match(key) or MAE_DECODER.match(key):
            dropped.append(key)
            return True
        return False

    return _apply_table(state, TIMM_VIT_TABLE[:1] + TIMM_VIT_TABLE[2:], out, skip)


def _multispectral(bands: list[str], groups: list[list[str]], patch: int, grid: int, mean: list[float],
                   std: list[float], scale: float = 1.0) -> dict[str, Any]:
    return {"class_path": "maekit.domains.MultispectralAdapter",
            "init_args": {"bands": bands, "groups": groups, "patch_size": patch, "mean": mean, "std": std,
                          "scale": [scale] * len(bands), "position": "learned", "max_grid": grid}}


def _prithvi_adapter(patch: int, grid: int, mean: list[float], std: list[float]) -> dict[str, Any]:
    """Prithvi's one band group of six HLS bands; the `hls` preset gives their wavelengths and
    accepts the old B02..B07 names."""
    adapter = _multispectral(list(PRITHVI_BANDS), [list(PRITHVI_BANDS)], patch, grid, mean, std)
    adapter["init_args"].update(preset="hls", rgb=["RED", "GREEN", "BLUE"])
    return adapter


def upgrade_legacy_bands(config: dict[str, Any]) -> dict[str, Any]:
    """A model description written before Prithvi's bands were named as the `hls` preset names
    them (B02..B07, the HLS L30 numbers, no preset): the same weights with the bands renamed and
    the `hls` preset recorded, so it loads and knows its wavelengths. Other descriptions unchanged."""
    adapter = config.get("adapter") or {}
    args = adapter.get("init_args") or {}
    if (not str(config.get("source_format", "")).startswith("prithvi") or args.get("preset")
            or list(args.get("bands") or []) != PRITHVI_LEGACY_BANDS):
        return config
    rename = HLS.band_aliases
    args = {**args, "bands": [rename[b] for b in args["bands"]], "preset": "hls",
            "groups": [[rename.get(b, b) for b in g] for g in args.get("groups") or [args["bands"]]]}
    for key in ("input_bands", "rgb"):
        if args.get(key):
            args[key] = [rename.get(b, b) for b in args[key]]
    return {**config, "adapter": {**adapter, "init_args": args}}


def _global_pool(state: dict[str, Tensor], out: dict[str, Tensor]) -> tuple[str, ...]:
    """A fine-tuned timm / MAE / SatMAE classifier trained with global average pooling
    (facebookresearch/mae `main_finetune.py` defaults to `global_pool=True`): its file has
    `fc_norm` (the LayerNorm after mean pooling over the patch tokens) and no final `norm`. Then
    `fc_norm` is kept (`fc_norm.*`) and the keys are returned so the table skips them."""
    if "fc_norm.weight" in state and "norm.weight" not in state:
        out["fc_norm.weight"], out["fc_norm.bias"] = state["fc_norm.weight"], state["fc_norm.bias"]
        return ("fc_norm.weight", "fc_norm.bias")
    return ()


def _target_grid(image_size: int | None, patch: int, side: int) -> int:
    """The patch grid an input of `image_size` px makes (`side`, the checkpoint's, when None)."""
    if image_size is None:
        return side
    if image_size % patch:
        raise ConfigError(f"image_size {image_size} is not a multiple of the patch size {patch}")
    return image_size // patch


def resize_table_bicubic(rows: Tensor, side: int, new: int, align_corners: bool = False) -> Tensor:
    """A (side^2, D) row-major 2D position table resized to (new^2, D) by bicubic interpolation
    on the grid, as facebookresearch/mae's `interpolate_pos_embed` does (align_corners=False;
    terratorch's Prithvi uses True). The class slot is not part of `rows` (kept as it is)."""
    if new == side:
        return rows
    grid = rows.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    out = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=align_corners)
    return out.permute(0, 2, 3, 1).reshape(new * new, -1).to(rows.dtype)


FULL_MAE_UNSUPPORTED = (
    "the decoder of this MAE reads the encoder's class token and a fixed sin-cos position table "
    "laid out differently from maekit's decoder positions, and maekit's MaskedAutoencoder has no "
    "class token in its encoder, so the decoder cannot be mapped exactly; load the encoder "
    "(full=False) and pretrain a maekit decoder on top of it")


# ------------------------------------------------------------------------------ timm / MAE
def is_timm_vit(state: dict[str, Tensor]) -> bool:
    state = unwrap(state)
    return ("patch_embed.proj.weight" in state and state["patch_embed.proj.weight"].dim() == 4
            and "blocks.0.attn.qkv.weight" in state)


def convert_timm_vit(state: dict[str, Tensor], bands: list[str] | None = None,
                     mean: list[float] | None = None, std: list[float] | None = None,
                     scale: float = 1 / 255, heads: int | None = None, image_size: int | None = None) -> Converted:
    """A timm ViT or a facebookresearch/mae checkpoint (encoder-only `mae_pretrain_vit_*.pth`,
    full `mae_visualize_vit_*.pth`, or a fine-tuned classifier) as a maekit encoder: one band
    group of the image channels, a learned position table on the patch grid, a class token.
    Inputs are taken as uint8 RGB (`scale` 1/255) with ImageNet statistics by default. An MAE
    decoder and a classifier head are reported as dropped; a fine-tuned file trained with
    global pooling keeps its `fc_norm` (see `_global_pool`).

    `image_size`: the input size the encoder will see; the position table is resized to its
    grid by bicubic interpolation as facebookresearch/mae's `interpolate_pos_embed` does
    (align_corners=False, class slot kept)."""
    state = unwrap(state)
    weight = state["patch_embed.proj.weight"]
    width, channels, patch, _ = weight.shape
    stack = _stack(width, _depth(state), state["blocks.0.mlp.fc1.weight"].shape[0], 1e-6, heads)
    pos = state["pos_embed"][0]
    has_cls = "cls_token" in state
    side = _square_grid(pos.shape[0] - int(has_cls), 2, "pos_embed")[0]
    grid = _target_grid(image_size, patch, side)
    names = bands or (["R", "G", "B"] if channels == 3 else [f"c{i}" for i in range(channels)])
    adapter = _multispectral(names, [names], patch, grid,
                             mean or (IMAGENET_MEAN if channels == 3 else [0.0] * channels),
                             std or (IMAGENET_STD if channels == 3 else [1.0] * channels), scale)
    out: dict[str, Tensor] = {
        "adapter.patch_embed.0.weight": weight.reshape(width, -1),
        "adapter.patch_embed.0.bias": state["patch_embed.proj.bias"],
        "adapter.pos_table.table": resize_table_bicubic(pos[int(has_cls):], side, grid),
    }
    if has_cls:
        out["encoder.cls_pos"] = pos[:1][None]
    dropped: list[str] = []
    not_mapped: list[str] = []
    pooled = _global_pool(state, out)
    unmatched = _timm_blocks(state, out, dropped, not_mapped, ("patch_embed.proj.bias", *pooled))
    has_decoder = any(MAE_DECODER.match(k) for k in state)
    config = {"adapter": adapter, **stack, "class_token": has_cls, "group_embed": "zero",
              "source_format": "mae" if has_decoder else "timm-vit", "position_grid": [grid, grid],
              "global_pool": bool(pooled)}
    if grid != side:
        config["load_notes"] = [f"position table {side}x{side} -> {grid}x{grid} by bicubic interpolation "
                                      "(align_corners=False, as facebookresearch/mae's interpolate_pos_embed)"]
    if has_decoder:
        config["full_unsupported"] = FULL_MAE_UNSUPPORTED
    return config, out, {"dropped": dropped, "not_mapped": not_mapped, "unmatched": unmatched}


# ------------------------------------------------------------------------------- MONAI
def is_monai_vit(state: dict[str, Tensor]) -> bool:
    return "patch_embedding.position_embeddings" in state


def _monai_patch(prefix: str, state: dict[str, Tensor], spatial_dims: int | None, in_channels: int | None,
                 patch_size: int | None) -> tuple[Tensor, Tensor, int, int, int]:
    """(weight (D, C * p^dims) in maekit's channel-first order, bias, spatial dims, channels,
    patch) of a MONAI `PatchEmbeddingBlock` under `prefix`, conv or perceptron."""
    conv = state.get(f"{prefix}patch_embeddings.weight")
    if conv is not None:
        if len(set(conv.shape[2:])) != 1:
            raise ConfigError(f"anisotropic patches {tuple(conv.shape[2:])} are not supported (maekit patches are "
                              "cubes/squares)")
        width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[2]
        return conv.reshape(width, -1), state[f"{prefix}patch_embeddings.bias"], conv.dim() - 2, channels, patch
    linear = state.get(f"{prefix}patch_embeddings.1.weight")
    if linear is None:
        raise ConfigError(f"no {prefix}patch_embeddings weights (conv or perceptron) in the checkpoint")
    if spatial_dims is None or in_channels is None or patch_size is None:
        raise ConfigError("a MONAI 'perceptron' patch embedding does not record its layout: pass spatial_dims=, "
                          "in_channels= and patch_size= to convert_monai_vit")
    width = linear.shape[0]
    _expect(f"{prefix}patch_embeddings.1.weight", linear, (width, in_channels * patch_size**spatial_dims))
    # MONAI flattens a patch as (p1 p2 [p3] c); maekit's tokens are (c p1 p2 [p3])
    w = linear.reshape(width, *([patch_size] * spatial_dims), in_channels)
    w = w.permute(0, spatial_dims + 1, *range(1, spatial_dims + 1)).reshape(width, -1)
    return w, state[f"{prefix}patch_embeddings.1.bias"], spatial_dims, in_channels, patch_size


def _monai_blocks(state: dict[str, Tensor], prefix: str, depth: int, width: int, out: dict[str, Tensor],
                  dropped: list[str]) -> list[str]:
    """MONAI TransformerBlocks `prefix{i}.*` -> `encoder.blocks.{i}.*`; qkv without bias gets a
    zero bias (timm's Block has one); separate to_q/to_k/to_v are concatenated."""
    unmatched = []
    for i in range(depth):
        block = {k[len(f"{prefix}{i}."):]: v for k, v in state.items() if k.startswith(f"{prefix}{i}.")}
        if "attn.to_q.weight" in block:  # use_combined_linear=False
            for part in ("weight", "bias"):
                pieces = [block.pop(f"attn.to_{n}.{part}", None) for n in "qkv"]
                if all(p is not None for p in pieces):
                    block[f"attn.qkv.{part}"] = torch.cat(pieces)  # type: ignore[arg-type]
        mapped: dict[str, Tensor] = {}

        def skip(key: str, i: int = i) -> bool:
            if MONAI_UNUSED.fullmatch(key):
                dropped.append(f"{prefix}{i}.{key}")
                return True
            return False

        unmatched += [f"{prefix}{i}.{k}" for k in _apply_table(block, MONAI_BLOCK_TABLE, mapped, skip)]
        mapped.setdefault("attn.qkv.bias", torch.zeros(3 * width, dtype=mapped["attn.qkv.weight"].dtype))
        _expect(f"{prefix}{i}.attn.qkv.weight", mapped["attn.qkv.weight"], (3 * width, width))
        out.update({f"encoder.blocks.{i}.{k}": v for k, v in mapped.items()})
    return unmatched


def convert_monai_vit(state: dict[str, Tensor], channel_names: list[str] | None = None,
                      spatial_dims: int | None = None, in_channels: int | None = None, patch_size: int | None = None,
                      grid: tuple[int, ...] | None = None, heads: int | None = None) -> Converted:
    """`monai.networks.nets.ViT` or `MaskedAutoEncoderViT` (2D or 3D) as a maekit encoder.

    2D models become a `MultispectralAdapter` with one group of all channels; 3D models with one
    input channel a `VolumeAdapter` (several 3D channels are refused: maekit's volume adapter
    embeds each modality separately, MONAI mixes them in one projection). Inputs are used as
    given (mean 0, std 1): apply your MONAI transforms first. The position embedding
    (learnable, sin-cos or none: all are stored) becomes a learned table; the class token (ViT
    `classification=True`, always in the MAE) gets no position, as in MONAI. LayerNorm eps is
    1e-5 (PyTorch's default, which MONAI uses). Heads are not recorded in the weights: the
    named size's unless `heads` is given.
    """
    state = unwrap(state)
    is_mae = "decoder_embed.weight" in state or "mask_tokens" in state
    weight, bias, dims, channels, patch = _monai_patch("patch_embedding.", state, spatial_dims, in_channels,
                                                       patch_size)
    width = weight.shape[0]
    pos = state["patch_embedding.position_embeddings"][0]
    grid = tuple(grid) if grid else _square_grid(pos.shape[0], dims, "patch_embedding.position_embeddings")
    table, side = _grid_table(pos, grid)
    depth = _depth(state)
    final_norm = "norm."
    if is_mae:  # MaskedAutoEncoderViT: blocks = Sequential(*blocks, LayerNorm)
        depth -= 1
        final_norm = f"blocks.{depth}."
    stack = _stack(width, depth, state["blocks.0.mlp.linear1.weight"].shape[0], 1e-5, heads)
    out: dict[str, Tensor] = {"adapter.patch_embed.0.weight": weight, "adapter.patch_embed.0.bias": bias,
                              "adapter.pos_table.table": table}
    dropped: list[str] = []
    unmatched = _monai_blocks(state, "blocks.", depth, width, out, dropped)
    for part in ("weight", "bias"):
        out[f"encoder.norm.{part}"] = state[f"{final_norm}{part}"]
    has_cls = "cls_token" in state
    if has_cls:
        out["encoder.cls_token"] = state["cls_token"]
        out["encoder.cls_pos"] = torch.zeros_like(state["cls_token"])
    known = {f"{final_norm}weight", f"{final_norm}bias", "cls_token", "patch_embedding.position_embeddings"}
    for key in state:
        if key.startswith("patch_embedding.patch_embeddings") or key in known or re.match(r"blocks\.\d+\.", key):
            continue
        if key.startswith(("classification_head.", "decoder_", "mask_tokens")):
            dropped.append(key)
        else:
            unmatched.append(key)
    names = channel_names or [f"c{i}" for i in range(channels)]
    if len(names) != channels:
        raise ConfigError(f"{len(names)} channel names given for a model of {channels} input channels")
    if dims == 2:
        adapter = _multispectral(names, [names], patch, side, [0.0] * channels, [1.0] * channels)
    elif channels == 1:
        adapter = {"class_path": "maekit.domains.VolumeAdapter",
                   "init_args": {"modalities": names, "patch_size": patch, "position": "learned", "max_grid": side}}
    else:
        raise ConfigError(f"a 3D MONAI ViT over {channels} channels mixes them in one patch projection; maekit's "
                          "VolumeAdapter embeds each modality on its own, so it cannot be converted exactly")
    config = {"adapter": adapter, **stack, "class_token": has_cls, "group_embed": "zero",
              "source_format": "monai-mae" if is_mae else "monai-vit", "position_grid": list(grid)}
    if is_mae:
        config["full_unsupported"] = FULL_MAE_UNSUPPORTED
    return config, out, {"dropped": dropped, "not_mapped": [], "unmatched": unmatched}


# ----------------------------------------------------------------------------- BM-MAE
def is_bm_mae(state: dict[str, Tensor]) -> bool:
    return any(re.match(r"tokenizers\.[^.]+\.patch_embedding\.", k) for k in state)


def convert_bm_mae(state: dict[str, Tensor], heads: int | None = None) -> Converted:
    """BM-MAE (Robinet et al. 2025; `bmmae.pth`, `luklebigbosse/BM-MAE`) as a maekit
    `VolumeAdapter` encoder: one MONAI `PatchEmbeddingBlock` per modality
    (`tokenizers.{m}.patch_embedding.*`, conv 16^3 patches, sin-cos positions) into a ViT of
    MONAI `TransformerBlock`s (qkv bias, MLP 2x), `norm`, `cls_token`. Each modality becomes
    its own group with its own projection; the position tables, identical sin-cos tables in
    the published model, become one shared learned table (different tables are refused).
    Modalities keep their BM-MAE names (`t1`, `t1ce`, `t2`, `flair`) in checkpoint order.
    The decoder (`decoder.*`) is dropped."""
    state = unwrap(state)
    modalities = list(dict.fromkeys(m.group(1) for k in state
                                    if (m := re.match(r"tokenizers\.([^.]+)\.patch_embedding\.", k))))
    out: dict[str, Tensor] = {}
    tables = []
    patch = 0
    for g, modality in enumerate(modalities):
        weight, bias, dims, channels, patch = _monai_patch(f"tokenizers.{modality}.patch_embedding.", state,
                                                           None, None, None)
        if dims != 3 or channels != 1:
            raise ConfigError(f"BM-MAE tokenizer {modality!r} is {dims}D over {channels} channels, expected 3D over 1")
        out[f"adapter.patch_embed.{g}.weight"], out[f"adapter.patch_embed.{g}.bias"] = weight, bias
        tables.append(state[f"tokenizers.{modality}.patch_embedding.position_embeddings"][0])
    if any(not torch.allclose(t, tables[0], atol=1e-6) for t in tables[1:]):
        raise ConfigError("BM-MAE tokenizers have different position tables; maekit shares one table across "
                          "modalities, so this checkpoint cannot be converted exactly")
    grid = _square_grid(tables[0].shape[0], 3, "BM-MAE position_embeddings")
    width = tables[0].shape[1]
    depth = _depth(state)
    stack = _stack(width, depth, state["blocks.0.mlp.linear1.weight"].shape[0], 1e-5, heads)
    out["adapter.pos_table.table"] = tables[0]
    dropped: list[str] = []
    unmatched = _monai_blocks(state, "blocks.", depth, width, out, dropped)
    out["encoder.norm.weight"], out["encoder.norm.bias"] = state["norm.weight"], state["norm.bias"]
    has_cls = "cls_token" in state
    if has_cls:
        out["encoder.cls_token"] = state["cls_token"]
        out["encoder.cls_pos"] = torch.zeros_like(state["cls_token"])
    for key in state:
        if key.startswith(("tokenizers.", "blocks.")) or key in ("norm.weight", "norm.bias", "cls_token"):
            continue
        (dropped if key.startswith(("decoder.", "output_layer.", "clip_mlp.")) else unmatched).append(key)
    adapter = {"class_path": "maekit.domains.VolumeAdapter",
               "init_args": {"modalities": modalities, "patch_size": patch, "position": "learned", "max_grid": grid[0]}}
    config = {"adapter": adapter, **stack, "class_token": has_cls, "group_embed": "zero", "source_format": "bm-mae",
              "position_grid": list(grid),
              "full_unsupported": FULL_MAE_UNSUPPORTED}
    return config, out, {"dropped": dropped, "not_mapped": [], "unmatched": unmatched}


# ----------------------------------------------------------------------------- Prithvi
def is_prithvi(state: dict[str, Tensor]) -> bool:
    weight = _strip(state, "encoder.").get("patch_embed.proj.weight")
    return weight is not None and weight.dim() == 5


def _sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(M, dim) sin-cos code of positions, MAE's 1D formula (frequencies 1/10000^(2i/dim))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


def prithvi_sincos_table(dim: int, frames: Tensor | list[int], side: int) -> Tensor:
    """Prithvi's fixed 3D sin-cos positions (no class slot) for the given frame positions on a
    side x side grid: rows time-major, then row, then column; channels [column 6/16, row 6/16,
    time 4/16] of `dim` (as terratorch's `get_3d_sincos_pos_embed`)."""
    if dim % 16:
        raise ConfigError(f"Prithvi's 3D sin-cos positions need a width divisible by 16, not {dim}")
    frames = torch.as_tensor(frames)
    spatial, temporal = dim // 16 * 6, dim // 16 * 4
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    w = _sincos_1d(spatial, cols.flatten()).repeat(len(frames), 1)
    h = _sincos_1d(spatial, rows.flatten()).repeat(len(frames), 1)
    t = _sincos_1d(temporal, frames).repeat_interleave(side * side, 0)
    return torch.cat([w, h, t], 1).float()


def _prithvi_frames_from_table(pos: Tensor) -> int | None:
    """The frame count a Prithvi position table was built for, read from its structure: in the
    3D sin-cos table the time channels (the last 4/16) are constant within each frame's block
    of g x g rows. None when no frame count fits (a table that is not Prithvi's sin-cos)."""
    rows, dim = pos.shape[0] - 1, pos.shape[1]
    if dim % 16:
        return None
    time = pos[1:, dim // 16 * 12:].float()
    for t in range(1, rows + 1):
        side = round((rows / t) ** 0.5)
        if rows % t or side * side * t != rows or side < 2:
            continue
        blocks = time.reshape(t, side * side, -1)
        if (blocks - blocks[:, :1]).abs().max() <= 1e-3 * max(1.0, float(time.abs().max())):
            return t
    return None


def convert_prithvi(state: dict[str, Tensor], frame: int = 0, heads: int | None = None, num_frames: int | None = None,
                    upstream_config: dict[str, Any] | None = None, image_size: int | None = None,
                    temporal: bool = False) -> Converted:
    """Prithvi-EO 1.0 (`Prithvi_100M.pt`: ViT-B, 3 frames) or 2.0 (`Prithvi_EO_V2_300M.pt` and
    600M, keys under `encoder.`/`decoder.`, optional `-TL` date/location scales; every 2.0
    release is trained with 4 frames) as a single-image `MultispectralAdapter` with one group of
    the six HLS bands.

    Frames: `pos_embed` holds 1 + T g^2 rows, and T is needed to find g (4 x 14^2 = 28^2 rows
    fit T=1 too). T is, in this order: `num_frames` given; the release's `config.json`
    (`upstream_config`, `pretrained_cfg.num_frames`); read from the table's structure (the time
    channels are constant within a frame's block); else 4 for 2.0 files and 3 for 1.0 files.

    Time: Prithvi's Conv3d kernel is (1, p, p) (tubelet 1), so every frame goes through the
    same 2D projection; a single image is one frame, and its positions are frame `frame`'s rows
    of the fixed 3D sin-cos table: what terratorch's `PrithviViT` computes for a one-frame input
    (it recomputes the sin-cos table for the input's frame count; frame 0 of any T is the same).
    `image_size`: the input size the encoder will see; as terratorch builds its model for the
    input size (recomputing the fixed table for that grid, never reading the stored one), the
    table is recomputed for that grid; a stored table that is not the published sin-cos table
    is resized by bicubic interpolation (align_corners=True, terratorch's
    `_interpolate_pos_encoding`). A tubelet over several frames would be summed over time.
    Date/location encodings (`*_embed_enc.scale`) have no maekit input: not mapped, reported.
    LayerNorm eps 1e-5 (`nn.LayerNorm`, as Prithvi builds its blocks). Statistics: Prithvi's
    published per-band mean/std (HLS reflectance x 10000).

    `temporal=True` loads the model as it was trained, on time series: a
    `TemporalMultispectralAdapter` whose positions are Prithvi's 3D sin-cos table split into its
    spatial part (the learned table holds column | row, the time channels zeroed) and its frame
    part (`frame_position: prithvi`, sin-cos of the frame index in the last 4/16 channels), so
    1..T dates get the rows of a table built for their count, as terratorch does. The `-TL`
    encodings map onto the adapter's date and location codes (`temporal_embed_enc.scale` ->
    `adapter.time_scale`, `location_embed_enc.scale` -> `adapter.location_scale`); they apply
    when the batch carries `dates` (year, day of year) and `latlon` (lat, lon), as upstream
    applies them when given `temporal_coords` / `location_coords`. Needs the published sin-cos
    table (Prithvi's `pos_embed` is a fixed buffer)."""
    state = unwrap(state)
    v2 = any(k.startswith("encoder.") for k in state)
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")} if v2 else dict(state)
    dropped = [k for k in state if k.startswith("decoder.")] if v2 else []
    weight = enc["patch_embed.proj.weight"]
    width, channels, tubelet, patch, _ = weight.shape
    if channels != len(PRITHVI_BANDS):
        raise ConfigError(f"Prithvi patch embedding has {channels} input bands, expected {len(PRITHVI_BANDS)}")
    stack = _stack(width, _depth(enc), enc["blocks.0.mlp.fc1.weight"].shape[0], 1e-5, heads)
    pos = enc["pos_embed"][0]
    cfg = upstream_config or {}
    recorded = (cfg.get("pretrained_cfg") or {}).get("num_frames", cfg.get("num_frames"))
    from_table = _prithvi_frames_from_table(pos)
    if num_frames is not None:
        frames, how = int(num_frames), "given"
    elif recorded is not None:
        frames, how = int(recorded), "from the release's config.json"
    elif from_table is not None:
        frames, how = from_table, "read from the position table"
    else:
        frames, how = (4, "Prithvi-EO-2.0's published setting") if v2 else (3, "Prithvi-EO-1.0's published setting")
    rows = pos.shape[0] - 1
    side = round((rows / frames) ** 0.5)
    if rows % frames or side * side * frames != rows:
        raise ConfigError(f"Prithvi pos_embed has {pos.shape[0]} rows, not 1 + {frames} frames ({how}) x a square "
                          "grid; pass num_frames= with the frame count the checkpoint was trained with")
    if not 0 <= frame < frames:
        raise ConfigError(f"frame {frame} is outside the {frames} frames of the position table")
    grid = _target_grid(image_size, patch, side)
    published = torch.allclose(pos[1:].float(), prithvi_sincos_table(width, list(range(frames)), side), atol=1e-4) \
        if width % 16 == 0 else False
    block = pos[1 + frame * side * side: 1 + (frame + 1) * side * side]
    if grid == side:
        table = block
    elif published:
        table = prithvi_sincos_table(width, [frame], grid).to(pos.dtype)
    else:
        table = resize_table_bicubic(block, side, grid, align_corners=True)
    if temporal:
        return _prithvi_temporal(enc, state, v2, weight, stack, frames, how, side, grid, published, dropped)
    out: dict[str, Tensor] = {
        "adapter.patch_embed.0.weight": weight.sum(2).reshape(width, -1),
        "adapter.patch_embed.0.bias": enc["patch_embed.proj.bias"],
        "adapter.pos_table.table": table,
        "encoder.cls_pos": pos[:1][None],
    }
    not_mapped = [("encoder." if v2 else "") + k for k in enc if re.fullmatch(r"(temporal|location)_embed_enc\..*", k)]
    encoder_only = {k: v for k, v in enc.items() if f"{'encoder.' if v2 else ''}{k}" not in not_mapped}
    unmatched = _timm_blocks(encoder_only, out, dropped, not_mapped, ("patch_embed.proj.bias",))
    if v2:
        unmatched += [k for k in state if not k.startswith(("encoder.", "decoder."))]
    mean, std = (PRITHVI_V2_MEAN, PRITHVI_V2_STD) if v2 else (PRITHVI_V1_MEAN, PRITHVI_V1_STD)
    adapter = _prithvi_adapter(patch, grid, mean, std)
    config = {"adapter": adapter, **stack, "class_token": "cls_token" in enc, "group_embed": "zero",
              "source_format": "prithvi-eo-2" if v2 else "prithvi-eo-1", "tubelet": tubelet, "num_frames": frames,
              "position_grid": [grid, grid], "full_unsupported": FULL_MAE_UNSUPPORTED,
              "load_notes": [f"{frames} frames ({how}) of {side}x{side} positions; frame {frame}'s rows used"]}
    if grid != side:
        config["load_notes"].append(f"position table {side}x{side} -> {grid}x{grid}, " + (
            "recomputed from Prithvi's 3D sin-cos formula (as terratorch builds it for the input size)" if published
            else "bicubic interpolation (align_corners=True, as terratorch's _interpolate_pos_encoding)"))
    return config, out, {"dropped": dropped, "not_mapped": not_mapped, "unmatched": unmatched}


def _prithvi_temporal(enc: dict[str, Tensor], state: dict[str, Tensor], v2: bool, weight: Tensor,
                      stack: dict[str, Any], frames: int, how: str, side: int, grid: int, published: bool,
                      dropped: list[str]) -> Converted:
    """`convert_prithvi(..., temporal=True)`: see its docstring."""
    width, _, tubelet, patch, _ = weight.shape
    if tubelet != 1:
        raise ConfigError(f"Prithvi's patch embedding spans {tubelet} frames; the temporal path needs tubelet 1 "
                          "(as every released Prithvi-EO-2.0 checkpoint has)")
    if not published:
        raise ConfigError("temporal=True needs Prithvi's fixed 3D sin-cos pos_embed; this table is not it "
                          "(load it single-date, temporal=False)")
    spatial = prithvi_sincos_table(width, [0], grid)
    spatial[:, width // 16 * 12:] = 0.0  # the frame part is added per token by the adapter
    pos = enc["pos_embed"][0]
    out: dict[str, Tensor] = {
        "adapter.patch_embed.0.weight": weight[:, :, 0].reshape(width, -1),
        "adapter.patch_embed.0.bias": enc["patch_embed.proj.bias"],
        "adapter.pos_table.table": spatial.to(pos.dtype),
        "encoder.cls_pos": pos[:1][None],
    }
    prefix = "encoder." if v2 else ""
    codes = {"temporal_embed_enc.scale": "adapter.time_scale", "location_embed_enc.scale": "adapter.location_scale"}
    for key, target in codes.items():
        if key in enc:
            out[target] = _expect(prefix + key, enc[key], (1,)).reshape(1)
    others = [prefix + k for k in enc if re.fullmatch(r"(temporal|location)_embed_enc\..*", k) and k not in codes]
    unmatched = _timm_blocks({k: v for k, v in enc.items() if k not in codes and prefix + k not in others}, out,
                             dropped, [], ("patch_embed.proj.bias",))
    unmatched += others
    if v2:
        unmatched += [k for k in state if not k.startswith(("encoder.", "decoder."))]
    mean, std = (PRITHVI_V2_MEAN, PRITHVI_V2_STD) if v2 else (PRITHVI_V1_MEAN, PRITHVI_V1_STD)
    adapter = _prithvi_adapter(patch, grid, mean, std)
    adapter["class_path"] = "maekit.domains.multispectral.TemporalMultispectralAdapter"
    adapter["init_args"].update(frame_position="prithvi", date_encoding="temporal_embed_enc.scale" in enc,
                                location_encoding="location_embed_enc.scale" in enc, coords_scale="learned")
    encodings = [n for n, k in (("date", "temporal_embed_enc.scale"), ("location", "location_embed_enc.scale")) if k in enc]
    config = {"adapter": adapter, **stack, "class_token": "cls_token" in enc, "group_embed": "zero",
              "source_format": "prithvi-eo-2" if v2 else "prithvi-eo-1", "tubelet": tubelet, "num_frames": frames,
              "position_grid": [grid, grid], "full_unsupported": FULL_MAE_UNSUPPORTED,
              "load_notes": [f"temporal: trained on {frames} frames ({how}); runs on 1..{frames} dates "
                             f"(frame positions from Prithvi's 3D sin-cos formula); "
                             f"{' and '.join(encodings) + ' encoding' if encodings else 'no date/location encoding'}"]}
    if grid != side:
        config["load_notes"].append(f"position table {side}x{side} -> {grid}x{grid}, recomputed from Prithvi's 3D "
                                    "sin-cos formula (as terratorch builds it for the input size)")
    return config, out, {"dropped": dropped, "not_mapped": [], "unmatched": unmatched}


# ------------------------------------------------------------------------------ SatMAE
def is_satmae_group(state: dict[str, Tensor]) -> bool:
    state = unwrap(state)
    return "channel_embed" in state and "patch_embed.0.proj.weight" in state


def convert_satmae_group(state: dict[str, Tensor], bands: list[str] | None = None,
                         groups: list[list[str]] | None = None, heads: int | None = None,
                         image_size: int | None = None) -> Converted:
    """SatMAE's group-channel ViT (pretraining `MaskedAutoencoderGroupChannelViT` or fine-tuning
    `GroupChannelsVisionTransformer`) as a `MultispectralAdapter` with the same groups.

    Token embedding in SatMAE: `patch_embed[g](x_g) + cat(pos_embed[pos], channel_embed[g])`;
    in maekit: `patch_embed[g] + pos_table[pos] + group_embed[g]`, so the position table is
    `pos_embed` padded with zeros over the channel part and the group embedding is
    `channel_embed` padded with zeros over the position part: the same sum. The class token
    gets `cat(pos_embed[0], channel_cls_embed or 0)`. Default bands/groups are the published
    fMoW-Sentinel ones; statistics follow SatMAE's `SentinelNormalize` ((x - (m - 2s)) / 4s,
    without its clipping to [0, 1] and uint8 rounding). A fine-tuned file trained with global
    pooling keeps its `fc_norm` (see `_global_pool`). `image_size`: as in `convert_timm_vit`
    (SatMAE's `interpolate_pos_embed` is MAE's: bicubic, align_corners=False)."""
    state = unwrap(state)
    groups = [list(g) for g in (groups or SATMAE_GROUPS)]
    bands = list(bands or SATMAE_BANDS)
    num = sum(1 for k in state if re.fullmatch(r"patch_embed\.\d+\.proj\.weight", k))
    if num != len(groups):
        raise ConfigError(f"the checkpoint has {num} band groups, the given groups are {len(groups)}: {groups}")
    channel = state["channel_embed"][0]
    pos = state["pos_embed"][0]
    width = state["patch_embed.0.proj.weight"].shape[0]
    _expect("channel_embed", channel, (num, width - pos.shape[1]))
    out: dict[str, Tensor] = {}
    patch = 0
    for g, group in enumerate(groups):
        w = state[f"patch_embed.{g}.proj.weight"]
        patch = w.shape[-1]
        _expect(f"patch_embed.{g}.proj.weight", w, (width, len(group), patch, patch))
        out[f"adapter.patch_embed.{g}.weight"] = w.reshape(width, -1)
        out[f"adapter.patch_embed.{g}.bias"] = state[f"patch_embed.{g}.proj.bias"]
    side = _square_grid(pos.shape[0] - 1, 2, "pos_embed")[0]
    grid = _target_grid(image_size, patch, side)
    pad = torch.zeros(grid * grid, channel.shape[1], dtype=pos.dtype)
    out["adapter.pos_table.table"] = torch.cat([resize_table_bicubic(pos[1:], side, grid), pad], 1)
    out["adapter.group_embed.weight"] = torch.cat([torch.zeros(num, pos.shape[1], dtype=pos.dtype), channel], 1)
    cls_channel = state.get("channel_cls_embed", torch.zeros(1, 1, channel.shape[1]))[0]
    out["encoder.cls_pos"] = torch.cat([pos[:1], cls_channel], 1)[None]
    dropped: list[str] = []
    extra = tuple(k for k in state if re.fullmatch(r"patch_embed\.\d+\.proj\.(weight|bias)", k)) + (
        "channel_embed", "channel_cls_embed")
    extra += _global_pool(state, out)
    unmatched = _timm_blocks(state, out, dropped, [], extra)
    mean = [m - 2 * s for m, s in zip(SATMAE_MEAN, SATMAE_STD)] if bands == SATMAE_BANDS else [0.0] * len(bands)
    std = [4 * s for s in SATMAE_STD] if bands == SATMAE_BANDS else [1.0] * len(bands)
    stack = _stack(width, _depth(state), state["blocks.0.mlp.fc1.weight"].shape[0], 1e-6, heads)
    adapter = _multispectral(bands, groups, patch, grid, mean, std)
    config = {"adapter": adapter, **stack, "class_token": "cls_token" in state, "source_format": "satmae-group",
              "position_grid": [grid, grid], "global_pool": "fc_norm.weight" in out,
              "full_unsupported": FULL_MAE_UNSUPPORTED}
    if grid != side:
        config["load_notes"] = [f"position table {side}x{side} -> {grid}x{grid} by bicubic interpolation "
                                      "(align_corners=False, as SatMAE's interpolate_pos_embed)"]
    return config, out, {"dropped": dropped, "not_mapped": [], "unmatched": unmatched}


# ---------------------------------------------------------------------------- Point-MAE
POINT_MAE_TABLE = [
    (r"encoder\.(first_conv|second_conv)\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)",
     r"adapter.point_embed.\1.\2.\3"),
    (r"pos_embed\.(0|2)\.(weight|bias)", r"adapter.pos_embed.\1.\2"),
    (r"blocks\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"encoder.blocks.\1.\2.\3"),
    (r"blocks\.blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"encoder.blocks.\1.attn.\2.\3"),
    (r"blocks\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.blocks.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"encoder.norm.\1"),
    (r"cls_token", "encoder.cls_token"),
    (r"cls_pos", "encoder.cls_pos"),
]
#: parts of Point-MAE checkpoints the encoder does not use: the MAE decoder and classifier heads
POINT_MAE_DROPPED = re.compile(r"^(mask_token$|decoder_pos_embed\.|MAE_decoder\.|increase_dim\.|cls_head_finetune\.)")


def is_point_mae(state: dict[str, Tensor]) -> bool:
    state = unwrap(state)
    return any(re.match(r"(module\.)?(MAE_encoder\.)?encoder\.first_conv\.0\.weight$", k) for k in state)


def convert_point_mae(state: dict[str, Tensor], groups: int | None = None, group_size: int | None = None,
                      heads: int | None = None) -> Converted:
    """Point-MAE (Pang et al. 2022) as a maekit `PointCloudAdapter` encoder: the mini-PointNet
    (`encoder.first_conv` / `second_conv`), the centre MLP (`pos_embed`, added before every
    block), the blocks (`blocks.blocks.*`: no qkv bias, filled with zeros; LayerNorm eps 1e-5)
    and `norm`; fine-tuned checkpoints add `cls_token` / `cls_pos`.

    The group count and size are not in the weights. A pretraining checkpoint records the group
    size in its `increase_dim` head, and every published pretraining config uses 64 groups: these
    are taken (and said so in the load report). A fine-tuned checkpoint records neither (the
    published ones use 128 x 32 for ScanObjectNN, 64 x 32 for ModelNet40-1k, 512 x 32 for
    ModelNet40-8k): `groups` and `group_size` must be given, else a ConfigError names them."""
    state = {k.removeprefix("module.").removeprefix("MAE_encoder."): v for k, v in unwrap(state).items()}
    first = _expect("encoder.first_conv.0.weight", state["encoder.first_conv.0.weight"],
                    (128, state["encoder.first_conv.0.weight"].shape[1], 1))
    channels = first.shape[1]
    width = state["norm.weight"].shape[0]
    _expect("encoder.second_conv.3.weight", state["encoder.second_conv.3.weight"], (width, 512, 1))
    _expect("pos_embed.2.weight", state["pos_embed.2.weight"], (width, 128))
    head = state.get("increase_dim.0.weight")
    notes = []
    if head is None and (groups is None or group_size is None):
        missing = [name for name, v in (("groups", groups), ("group_size", group_size)) if v is None]
        raise ConfigError(f"this fine-tuned Point-MAE checkpoint does not record {' and '.join(missing)} (published: "
                          "ScanObjectNN 128 groups, ModelNet40 1k points 64, 8k points 512; group size 32); give "
                          + " and ".join(f"{m}=" for m in missing) + " (CLI: --model.adapter.init_args."
                          + " / --model.adapter.init_args.".join(missing) + ")")
    if group_size is None:
        group_size = head.shape[0] // 3  # type: ignore[union-attr]
        notes.append(f"group size {group_size} read from increase_dim")
    if groups is None:
        groups = 64
        notes.append("64 groups (Point-MAE's pretraining setting; the file does not record it)")
    depth = _depth(state, r"blocks\.blocks")
    stack = _stack(width, depth, state["blocks.blocks.0.mlp.fc1.weight"].shape[0], 1e-5, heads)
    dropped: list[str] = []

    def skip(key: str) -> bool:
        if POINT_MAE_DROPPED.match(key):
            dropped.append(key)
            return True
        return False

    out: dict[str, Tensor] = {}
    unmatched = _apply_table(state, POINT_MAE_TABLE, out, skip)
    for i in range(depth):  # Point-MAE's attention has no qkv bias: zeros give the same outputs
        out.setdefault(f"encoder.blocks.{i}.attn.qkv.bias", torch.zeros(3 * width))
    adapter = {"class_path": "maekit.domains.pointcloud.PointCloudAdapter",
               "init_args": {"groups": groups, "group_size": group_size,
                             "channels": [f"c{i}" for i in range(channels - 3)], "position_every_block": True}}
    has_cls = "cls_token" in state
    config = {"adapter": adapter, **stack, "class_token": has_cls, "source_format": "point-mae",
              "load_notes": notes,
              "full_unsupported": "Point-MAE's decoder adds its own centre MLP before every block and predicts only "
                                  "the masked groups; load the encoder (full=False) and pretrain a maekit decoder"}
    return config, out, {"dropped": dropped, "not_mapped": [], "unmatched": unmatched}


# ---------------------------------------------------------------------------- dispatch
#: (format name, detector, converter), tried in order
FORMATS: list[tuple[str, Callable[[dict[str, Tensor]], bool], Callable[..., Converted]]] = [
    ("bm-mae", is_bm_mae, convert_bm_mae),
    ("point-mae", is_point_mae, convert_point_mae),
    ("monai", is_monai_vit, convert_monai_vit),
    ("satmae-group", is_satmae_group, convert_satmae_group),
    ("prithvi", is_prithvi, convert_prithvi),
    ("timm-vit", is_timm_vit, convert_timm_vit),
]


def detect_format(state: dict[str, Tensor]) -> str | None:
    """The public layout of a state dict, or None (e.g. a maekit state dict)."""
    state = unwrap(state)
    if any(k.startswith(("encoder.blocks.", "adapter.")) for k in state) and not is_prithvi(state):
        return None
    return next((name for name, detect, _ in FORMATS if detect(state)), None)


def convert_public(state: dict[str, Tensor], upstream_config: dict[str, Any] | None = None,
                   **facts: Any) -> Converted | None:
    """Convert a public checkpoint of any known layout; None when the layout is not one of them.

    `facts` tell the converter what the file does not record (`heads`, `groups`, `group_size`,
    `num_frames`, `image_size`...); one its converter does not take is refused by name, as is
    a None value (pass nothing instead). `upstream_config` is a release's own config.json."""
    name = detect_format(state)
    if name is None:
        return None
    convert = next(c for n, _, c in FORMATS if n == name)
    accepted = set(inspect.signature(convert).parameters) - {"state", "upstream_config"}
    unknown = sorted(set(facts) - accepted)
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} does not apply to a {name} checkpoint; it takes "
                          f"{', '.join(sorted(accepted))}")
    if "upstream_config" in inspect.signature(convert).parameters:
        facts["upstream_config"] = upstream_config
    return convert(unwrap(state), **facts)
