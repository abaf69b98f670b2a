"""Converters from public checkpoint layouts to maekit's, with explicit key tables.

Each converter returns the model description (`adapter` spec, `size`, `class_token`) that
`from_pretrained` rebuilds, the converted state dict, and a report of what it dropped (heads
the kit does not use) and what it could not match; shapes are checked, nothing unmatched is
dropped silently.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from maekit.backbones import SIZES
from maekit.errors import ConfigError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

#: timm `VisionTransformer` (and facebookresearch/mae encoder) -> maekit, one entry per tensor
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


def is_timm_vit(state: dict[str, Tensor]) -> bool:
    return "patch_embed.proj.weight" in state and "blocks.0.attn.qkv.weight" in state


def convert_timm_vit(state: dict[str, Tensor], bands: list[str] | None = None,
                     mean: list[float] | None = None, std: list[float] | None = None,
                     scale: float = 1 / 255) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, list[str]]]:
    """A timm ViT / MAE encoder checkpoint (e.g. `vit_base_patch16_224.mae`) as a maekit encoder:
    one band group of the image channels, a learned position table on the patch grid, a class
    token. Inputs are taken as uint8 RGB (`scale` 1/255) with ImageNet statistics by default."""
    if "module" in state or "model" in state:  # facebookresearch/mae wraps its weights
        state = state.get("model", state.get("module"))  # type: ignore[assignment]
    weight = state["patch_embed.proj.weight"]
    width, channels, patch, _ = weight.shape
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    size = next((name for name, s in SIZES.items() if s.width == width and s.depth == depth), None)
    if size is None:
        raise ConfigError(f"no maekit size has width {width} and depth {depth}")
    pos = state["pos_embed"][0]
    has_cls = "cls_token" in state
    grid_tokens = pos.shape[0] - int(has_cls)
    grid = round(grid_tokens**0.5)
    if grid * grid != grid_tokens:
        raise ConfigError(f"pos_embed has {grid_tokens} patch positions, not a square grid")
    names = bands or (["R", "G", "B"] if channels == 3 else [f"c{i}" for i in range(channels)])
    adapter = {"class_path": "maekit.domains.MultispectralAdapter",
               "init_args": {"bands": names, "groups": [names], "patch_size": patch,
                             "mean": mean or (IMAGENET_MEAN if channels == 3 else [0.0] * channels),
                             "std": std or (IMAGENET_STD if channels == 3 else [1.0] * channels),
                             "scale": [scale] * channels, "position": "learned", "max_grid": grid}}
    out: dict[str, Tensor] = {
        "adapter.patch_embed.0.weight": weight.reshape(width, -1),
        "adapter.pos_table.table": pos[int(has_cls):],
    }
    if has_cls:
        out["encoder.cls_pos"] = pos[:1][None]
    dropped, unmatched = [], []
    for key, value in state.items():
        if key in TIMM_VIT_SPECIAL:
            continue
        if TIMM_VIT_DROPPED.match(key):
            dropped.append(key)
            continue
        for pattern, target in TIMM_VIT_TABLE:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, target, key)] = value
                break
        else:
            unmatched.append(key)
    config = {"adapter": adapter, "size": size, "class_token": has_cls, "group_embed": "zero",
              "source_format": "timm-vit"}
    return config, out, {"dropped": dropped, "unmatched": unmatched}
