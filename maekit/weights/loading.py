"""Loading encoder weights from training checkpoints and exported files.

Only safe formats: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maekit.errors import DataError

#: prefixes under which the encoder's parts sit in the kit's checkpoints
_PREFIXES = ("mae.", "model.", "")
_PARTS = ("adapter.", "encoder.")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a `.safetensors`, `.ckpt`, `.pt` or `.pth` file (a Lightning checkpoint's
    `state_dict` is unwrapped)."""
    return read_weights(path)[0]


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], dict | None]:
    """The tensors of a weights file and, when known, the model description it was saved with
    (a kit checkpoint's `maekit` entry, or the `config.json` of an exported folder)."""
    path = Path(path)
    config = None
    sidecar = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if (path.is_dir() or path.suffix == ".safetensors") and sidecar.is_file():
        import json

        config = json.loads(sidecar.read_text())
    if path.is_dir():  # an exported model folder
        from maekit.weights.export import refuse_sharded_checkpoint

        refuse_sharded_checkpoint(path)
        path = path / "model.safetensors"
    if not path.is_file():
        raise DataError(path, "weights file does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), config
        except Exception as err:  # safetensors raises its own error types
            raise DataError(path, f"is not a valid safetensors file: {err}") from err
    try:  # training scripts of public MAEs save their argparse arguments beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise DataError(path, f"cannot be loaded safely (weights_only=True): {err}") from err
    if isinstance(obj, dict) and "state_dict" in obj:
        config = obj.get("maekit")
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # facebookresearch/mae, SatMAE
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("base_model"), dict):  # Point-MAE
        obj = obj["base_model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DataError(path, "does not hold a state dict of tensors")
    return obj, config


def encoder_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The `adapter.*` and `encoder.*` entries of a pretraining or fine-tuning state dict."""
    state = {k.replace("._orig_mod.", "."): v for k, v in state.items()}  # torch.compile'd stacks
    for prefix in _PREFIXES:
        picked = {k[len(prefix):]: v for k, v in state.items()
                  if k.startswith(prefix) and k[len(prefix):].startswith(_PARTS)}
        if any(k.startswith("encoder.") for k in picked):
            return picked
    return {}


def load_encoder(module: nn.Module, path: str | Path) -> list[str]:
    """Load adapter + encoder weights from `path` into `module` (which has `.adapter` and
    `.encoder`). Shapes must match. Weights the file lacks keep their fresh initialisation and
    are named in a warning; statistics buffers (band mean/std...) that differ from the
    configured ones are taken from the file, with a warning. Returns the missing names.
    """
    raw, config = read_weights(path)
    converted = convert_public_weights(raw, path) if config is None else None
    if converted is not None:
        config, state = converted
    else:
        state = encoder_state(raw)
    if not state:
        raise DataError(path, "holds no encoder weights (no 'encoder.*' keys) and is not a public layout the kit "
                              "converts (timm/MAE ViT, MONAI ViT/MAE, Prithvi, SatMAE, BM-MAE)")
    _check_class_token(state, module, path)
    _match_stack(module, config, path)
    own = {k: v for k, v in module.state_dict().items() if k.startswith(_PARTS)}
    if "adapter.pos_table.table" in state and "adapter.pos_table.table" not in own:
        grid = (config or {}).get("adapter", {}).get("init_args", {}).get("max_grid")
        raise DataError(path, "these weights use a learned position table; set the adapter's `position: learned`"
                              + (f" (and `max_grid: {grid}` or more)" if grid else ""))
    state = _adapt(state, own, module, config, path)
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    unexpected = sorted(set(state) - set(own))
    if mismatched or unexpected:
        detail = "; ".join(mismatched[:5] + [f"unexpected {k}" for k in unexpected[:5]])
        raise DataError(path, f"does not fit this model (is the encoder size / adapter the same as in "
                              f"pretraining?): {detail}")
    missing = sorted(set(own) - set(state))
    if missing:
        warnings.warn(f"{path}: has no weights for {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}; "
                      "they keep their fresh initialisation", stacklevel=2)
    buffers = {name for name, _ in module.named_buffers()}
    replaced = [k for k, v in state.items() if k in buffers and not torch.equal(v.to(own[k].dtype), own[k])]
    if replaced:
        warnings.warn(f"{path}: uses its own {', '.join(replaced)} (the values it was trained with) instead of "
                      "the configured ones", stacklevel=2)
    module.load_state_dict(state, strict=False)
    return missing


def convert_public_weights(raw: dict[str, Tensor], path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """A public checkpoint's tensors converted to the kit's names with the model description,
    or None when the layout is not a known one. Tensors no converter table knows make a
    DataError; dropped parts (classifier heads, decoders) and encoder parts without a maekit
    counterpart are named in a warning. The source's published statistics come along."""
    from maekit.weights.converters import convert_public
    from maekit.weights.hub import _build_adapter

    try:
        converted = convert_public(raw)
    except (KeyError, ValueError, RuntimeError) as err:  # ConfigError is a ValueError
        raise DataError(path, f"looks like a public checkpoint but cannot be converted: {err}") from err
    if converted is None:
        return None
    config, state, report = converted
    if report["unmatched"]:
        raise DataError(path, f"has tensors the {config['source_format']} converter cannot place: "
                              f"{report['unmatched'][:8]}")
    notes = []
    if report["dropped"]:
        notes.append(f"left out parts the encoder does not use ({len(report['dropped'])} tensors: "
                     f"{_module_names(report['dropped'])})")
    if report["not_mapped"]:
        notes.append(f"has no maekit counterpart for {report['not_mapped']} (not loaded)")
    if notes:
        warnings.warn(f"{path}: {config['source_format']} checkpoint: " + "; ".join(notes), stacklevel=3)
    source = _build_adapter(config["adapter"])
    for name, value in source.state_dict().items():  # statistics buffers (mean, std, scale, offset)
        state.setdefault(f"adapter.{name}", value)
    if config.get("group_embed") == "zero" and "adapter.group_embed.weight" not in state:
        width = state["adapter.patch_embed.0.weight"].shape[0]
        state["adapter.group_embed.weight"] = torch.zeros(source.num_groups, width)
    return config, state


def _module_names(keys: list[str]) -> list[str]:
    """Tensor names summarised by module: `blocks.*.norm_cross_attn`, `decoder_blocks`, `head`..."""
    names: dict[str, None] = {}
    for key in keys:
        name = re.sub(r"\.\d+\.", ".*.", key)
        name = re.sub(r"\.(weight|bias)$", "", name)
        if not name.startswith(("blocks.*", "encoder.blocks.*")):
            name = name.split(".")[0]
        names[name] = None
    return list(names)


def _check_class_token(state: dict[str, Tensor], module: nn.Module, path: str | Path) -> None:
    has = "encoder.cls_token" in state
    wants = getattr(getattr(module, "encoder", None), "num_prefix", 0) > 0
    if has and not wants:
        raise DataError(path, "these weights have a class token but the model has none; set `model.class_token: "
                              "true` (its output then also serves `pooling: cls`)")
    # a model with a class token on weights without one (Point-MAE / MAE fine-tuning from
    # pretraining weights) starts its class token fresh: reported with the other missing weights


def _match_stack(module: nn.Module, config: dict[str, Any] | None, path: str | Path) -> None:
    """Rebuild `module.encoder` when the weights were trained with other heads, MLP ratio or
    LayerNorm eps than the size's defaults (converted MONAI, Prithvi, BM-MAE checkpoints):
    shapes alone would not catch different heads or eps, and outputs would silently differ."""
    from maekit.backbones import TransformerStack

    encoder = getattr(module, "encoder", None)
    if config is None or not isinstance(encoder, TransformerStack):
        return
    wanted = {"heads": config.get("heads", encoder.heads), "mlp_ratio": float(config.get("mlp_ratio", encoder.mlp_ratio)),
              "norm_eps": float(config.get("norm_eps", encoder.norm_eps))}
    have = {"heads": encoder.heads, "mlp_ratio": encoder.mlp_ratio, "norm_eps": encoder.norm_eps}
    if wanted == have:
        return
    if (config.get("width"), config.get("depth")) not in ((None, None), (encoder.width, encoder.depth)):
        raise DataError(path, f"was trained with width {config.get('width')} and depth {config.get('depth')}, the "
                              f"model has {encoder.width} and {encoder.depth}; choose the matching `model.size`")
    module.encoder = TransformerStack(encoder.width, encoder.depth, wanted["heads"], mlp_ratio=wanted["mlp_ratio"],
                                      drop_path=encoder.drop_path, qkv_bias=encoder.qkv_bias,
                                      class_token=encoder.num_prefix > 0, norm_eps=wanted["norm_eps"])
    changed = {k: f"{have[k]} -> {v}" for k, v in wanted.items() if have[k] != v}
    warnings.warn(f"{path}: encoder rebuilt to match the weights: {changed}", stacklevel=3)


def _adapt(state: dict[str, Tensor], own: dict[str, Tensor], module: nn.Module, config: dict | None,
           path: str | Path) -> dict[str, Tensor]:
    """Fit weights saved for another input onto `module`: a learned position table of another
    grid size is interpolated; band/modality groups are matched by name (kept where the same
    channels form a group in both, newly initialised where not), per-channel statistics by
    channel name. Every change is reported in one warning."""
    notes: list[str] = []
    key = "adapter.pos_table.table"
    if key in state and key in own and state[key].shape != own[key].shape:
        state = dict(state, **{key: _interpolate_table(state[key], own[key], module)})
        notes.append(f"position table interpolated from {tuple(state[key].shape)} entries to {tuple(own[key].shape)}")
    target = getattr(module, "adapter", None)
    source_spec = (config or {}).get("adapter")
    if source_spec and isinstance(getattr(target, "groups", None), list) and hasattr(target, "channels"):  # grouped channels
        from maekit.weights.hub import _build_adapter

        source = _build_adapter(source_spec)
        if getattr(target, "names_pending", False) and len(source.channels) == len(target.channels):  # type: ignore[attr-defined]
            # channels given as a count (named by the data later) take the names of the weights
            target.adopt_names(source.channels)  # type: ignore[union-attr]
        if source.groups != target.groups or source.channels != target.channels:  # type: ignore[attr-defined]
            state = _remap_groups(state, own, source, target, notes)
    if notes:
        warnings.warn(f"{path}: " + "; ".join(notes), stacklevel=3)
    return state


def _interpolate_table(table: Tensor, like: Tensor, module: nn.Module) -> Tensor:
    dims = getattr(getattr(module, "adapter", None), "spatial_dims", 2)
    src = round(table.shape[0] ** (1 / dims))
    dst = round(like.shape[0] ** (1 / dims))
    grid = table.T.reshape(1, table.shape[1], *([src] * dims))
    mode = "bicubic" if dims == 2 else "trilinear"
    out = torch.nn.functional.interpolate(grid.float(), size=[dst] * dims, mode=mode, align_corners=False)
    return out.reshape(table.shape[1], -1).T.to(table.dtype)


def _remap_groups(state: dict[str, Tensor], own: dict[str, Tensor], source: nn.Module, target: nn.Module,
                  notes: list[str]) -> dict[str, Tensor]:
    original = state
    state = {k: v for k, v in state.items() if not k.startswith("adapter.patch_embed.")}
    kept, new = [], []
    group_embed = own["adapter.group_embed.weight"].clone() if "adapter.group_embed.weight" in own else None
    for j, group in enumerate(target.groups):  # type: ignore[attr-defined]
        matches = [i for i, g in enumerate(source.groups) if g == group]  # type: ignore[attr-defined]
        for part in ("weight", "bias"):
            name = f"adapter.patch_embed.{j}.{part}"
            if matches:
                state[name] = original[f"adapter.patch_embed.{matches[0]}.{part}"]
            else:
                state[name] = own[name]
        if matches:
            kept.append(group)
            if group_embed is not None and "adapter.group_embed.weight" in original:
                group_embed[j] = original["adapter.group_embed.weight"][matches[0]]
        else:
            new.append(group)
    if group_embed is not None:
        state["adapter.group_embed.weight"] = group_embed
    for stat in ("adapter.mean", "adapter.std", "adapter.scale", "adapter.offset"):
        if stat in original and stat in own:
            values = own[stat].clone()
            for c, name in enumerate(target.channels):  # type: ignore[attr-defined]
                if name in source.channels:  # type: ignore[attr-defined]
                    values[c] = original[stat][source.channels.index(name)]  # type: ignore[attr-defined]
            state[stat] = values
    dropped = [g for g in source.groups if g not in target.groups]  # type: ignore[attr-defined]
    notes.append(f"groups kept {kept}" + (f", newly initialised {new}" if new else "")
                 + (f", dropped {dropped}" if dropped else ""))
    return state
