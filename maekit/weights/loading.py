"""Loading encoder weights into tasks: kit checkpoints, exported files and public layouts.

Files are read by `maekit.weights.formats` (the one reader of on-disk formats), public layouts
converted by `maekit.weights.converters`. Each load is reported in one line:
`loaded WEIGHTS: kept N tensors, new M (...), dropped K (...)`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maekit.errors import ConfigError, DataError
from maekit.weights.converters import convert_public
from maekit.weights.formats import (_PARTS, _PREFIXES, WeightsFile, build_adapter, encoder_state, read_state_dict,
                                    read_weights)

__all__ = ["convert_public_weights", "encoder_state", "load_encoder", "load_summary", "read_state_dict",
           "read_weights"]


def load_summary(path: str | Path, kept: int, new: list[str], dropped: list[str], notes: list[str]) -> str:
    """The one line a load is reported in: counts, with names summarised by module."""
    line = f"loaded {path}: kept {kept} tensors"
    if new:
        line += f", new {len(new)} (the file has no weights for {', '.join(_module_names(new)[:8])}: fresh init)"
    if dropped:
        line += f", dropped {len(dropped)} ({', '.join(_module_names(dropped)[:8])})"
    return line + "".join(f"; {note}" for note in notes)


def _pick_encoder(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """The adapter + encoder entries of a kit state dict and the names of the rest."""
    plain = {k.replace("._orig_mod.", "."): k for k in state}  # torch.compile'd stacks
    for prefix in _PREFIXES:
        names = [k for k in plain if k.startswith(prefix) and k[len(prefix):].startswith(_PARTS)]
        if any(k[len(prefix):].startswith("encoder.") for k in names):
            picked = {k[len(prefix):]: state[plain[k]] for k in names}
            return picked, [plain[k] for k in plain if k not in set(names)]
    return {}, list(state)


def load_encoder(module: nn.Module, path: str | Path, **facts: Any) -> list[str]:
    """Load adapter + encoder weights from `path` into `module` (which has `.adapter` and
    `.encoder`). Shapes must match. Weights the file lacks keep their fresh initialisation;
    statistics buffers (band mean/std...) that differ from the configured ones are taken from
    the file. Everything is reported in one line (`load_summary`). Returns the missing names.

    A public checkpoint is converted with what the model says about itself (heads, point
    groups and group size, the learned table's grid) unless `facts` say otherwise.
    """
    wf = read_weights(path)
    path = wf.path
    notes: list[str] = []
    dropped: list[str] = []
    if wf.config is None:
        converted = convert_public_weights(wf, {**_module_facts(module), **facts}, strict=bool(facts))
    else:
        converted = None
    if converted is not None:
        config, state, report = converted
        dropped += report["dropped"] + report["not_mapped"]
        notes += report["notes"]
    else:
        config = wf.config
        state, rest = _pick_encoder(wf.state)
        dropped += rest
    if not state:
        raise DataError(path, "holds no encoder weights (no 'encoder.*' keys) and is not a public layout the kit "
                              "converts (timm/MAE ViT, MONAI ViT/MAE, Prithvi, SatMAE, BM-MAE, Point-MAE)")
    if "fc_norm.weight" in state:  # a classifier fine-tuned with global pooling (see converters._global_pool)
        state = {k: v for k, v in state.items() if not k.startswith("fc_norm.")}
        dropped += ["fc_norm.weight", "fc_norm.bias"]
        notes.append("fc_norm (the norm after mean pooling it was fine-tuned with) has no place in this task: "
                     "encoder.norm starts fresh; from_pretrained() gives the encoder as trained")
    _check_class_token(state, module, path)
    notes += _match_stack(module, config, path)
    own = {k: v for k, v in module.state_dict().items() if k.startswith(_PARTS)}
    if "adapter.pos_table.table" in state and "adapter.pos_table.table" not in own:
        grid = (config or {}).get("adapter", {}).get("init_args", {}).get("max_grid")
        raise DataError(path, "these weights use a learned position table; set the adapter's `position: learned`"
                              + (f" (and `max_grid: {grid}` or more)" if grid else ""))
    state = _adapt(state, own, module, config, notes)
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    unexpected = sorted(set(state) - set(own))
    if mismatched or unexpected:
        detail = "; ".join(mismatched[:5] + [f"unexpected {k}" for k in unexpected[:5]])
        raise DataError(path, f"does not fit this model (is the encoder size / adapter the same as in "
                              f"pretraining?): {detail}")
    missing = sorted(set(own) - set(state))
    buffers = {name for name, _ in module.named_buffers()}
    replaced = [k for k, v in state.items() if k in buffers and not torch.equal(v.to(own[k].dtype), own[k])]
    if replaced:
        notes.append(f"uses its own {', '.join(replaced)} (the values it was trained with) instead of the "
                     "configured ones")
    module.load_state_dict(state, strict=False)
    warnings.warn(load_summary(path, len(state), missing, dropped, notes), stacklevel=2)
    return missing


def _module_facts(module: nn.Module) -> dict[str, Any]:
    """What a task's model says about the weights it wants: heads, point groups and group size,
    and the input size a learned 2D position table is laid out for."""
    facts: dict[str, Any] = {}
    encoder, adapter = getattr(module, "encoder", None), getattr(module, "adapter", None)
    if getattr(encoder, "heads", None):
        facts["heads"] = encoder.heads  # type: ignore[union-attr]
    if isinstance(getattr(adapter, "group_size", None), int) and isinstance(getattr(adapter, "groups", None), int):
        facts["groups"], facts["group_size"] = adapter.groups, adapter.group_size  # type: ignore[union-attr]
    if getattr(adapter, "position", None) == "learned" and getattr(adapter, "spatial_dims", None) == 2:
        facts["image_size"] = adapter.max_grid * adapter.patch_size  # type: ignore[union-attr]
    return facts


def convert_public_weights(wf: WeightsFile, facts: dict[str, Any] | None = None, strict: bool = True
                           ) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, list[str]]] | None:
    """A public checkpoint's tensors converted to the kit's names, with the model description
    and a report (`dropped`, `not_mapped`, `notes`), or None when the layout is not a known one.
    `facts`: what the file does not record (see `converters.convert_public`); with
    `strict=False` those the converter does not take are left out instead of refused. Tensors
    no converter table knows make a DataError. The source's published statistics come along."""
    from maekit.weights.converters import FORMATS, detect_format

    facts = dict(facts or {})
    name = detect_format(wf.state)
    if name is None:
        return None
    if not strict:
        import inspect

        convert = next(c for n, _, c in FORMATS if n == name)
        facts = {k: v for k, v in facts.items() if k in inspect.signature(convert).parameters}
    try:
        converted = convert_public(wf.state, wf.upstream_config, **facts)
    except ConfigError as err:
        raise DataError(wf.path, f"{name} checkpoint: {err}") from err
    except (KeyError, ValueError, RuntimeError) as err:
        raise DataError(wf.path, f"looks like a public checkpoint but cannot be converted: {err}") from err
    assert converted is not None
    config, state, report = converted
    if report["unmatched"]:
        raise DataError(wf.path, f"has tensors the {config['source_format']} converter cannot place: "
                                 f"{report['unmatched'][:8]}")
    notes = [f"{config['source_format']} checkpoint converted"] + list(config.get("load_notes", []))
    if report["not_mapped"]:
        notes.append(f"no maekit counterpart for {report['not_mapped']} (not loaded)")
    source = build_adapter(config["adapter"])
    for key, value in source.state_dict().items():  # statistics buffers (mean, std, scale, offset)
        state.setdefault(f"adapter.{key}", value)
    if config.get("group_embed") == "zero" and "adapter.group_embed.weight" not in state:
        width = state["adapter.patch_embed.0.weight"].shape[0]
        state["adapter.group_embed.weight"] = torch.zeros(source.num_groups, width)
    return config, state, {"dropped": list(report["dropped"]), "not_mapped": list(report["not_mapped"]),
                           "notes": notes}


def _module_names(keys: list[str]) -> list[str]:
    """Tensor names summarised by module: `blocks.*.norm_cross_attn`, `decoder_blocks`, `head`..."""
    names: dict[str, None] = {}
    for key in keys:
        name = re.sub(r"\.\d+\.", ".*.", key)
        name = re.sub(r"\.\d+\.", ".*.", name)
        name = re.sub(r"\.(weight|bias)$", "", name)
        if not name.startswith(("blocks.*", "encoder.blocks.*")):
            parts = name.split(".")
            name = ".".join(parts[:2]) if name.startswith(("adapter.", "encoder.")) else parts[0]
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


def _match_stack(module: nn.Module, config: dict[str, Any] | None, path: str | Path) -> list[str]:
    """Rebuild `module.encoder` when the weights were trained with other heads, MLP ratio or
    LayerNorm eps than the size's defaults (converted MONAI, Prithvi, BM-MAE checkpoints):
    shapes alone would not catch different heads or eps, and outputs would silently differ."""
    from maekit.backbones import TransformerStack

    encoder = getattr(module, "encoder", None)
    if config is None or not isinstance(encoder, TransformerStack):
        return []
    wanted = {"heads": config.get("heads", encoder.heads), "mlp_ratio": float(config.get("mlp_ratio", encoder.mlp_ratio)),
              "norm_eps": float(config.get("norm_eps", encoder.norm_eps))}
    have = {"heads": encoder.heads, "mlp_ratio": encoder.mlp_ratio, "norm_eps": encoder.norm_eps}
    if wanted == have:
        return []
    if (config.get("width"), config.get("depth")) not in ((None, None), (encoder.width, encoder.depth)):
        raise DataError(path, f"was trained with width {config.get('width')} and depth {config.get('depth')}, the "
                              f"model has {encoder.width} and {encoder.depth}; choose the matching `model.size`")
    module.encoder = TransformerStack(encoder.width, encoder.depth, wanted["heads"], mlp_ratio=wanted["mlp_ratio"],
                                      drop_path=encoder.drop_path, qkv_bias=encoder.qkv_bias,
                                      class_token=encoder.num_prefix > 0, norm_eps=wanted["norm_eps"])
    changed = {k: f"{have[k]} -> {v}" for k, v in wanted.items() if have[k] != v}
    return [f"encoder rebuilt to match the weights: {changed}"]


def _adapt(state: dict[str, Tensor], own: dict[str, Tensor], module: nn.Module, config: dict | None,
           notes: list[str]) -> dict[str, Tensor]:
    """Fit weights saved for another input onto `module`: a learned position table of another
    grid size is interpolated; band/modality groups are matched by name (kept where the same
    channels form a group in both, newly initialised where not), per-channel statistics by
    channel name. Every change is added to `notes`."""
    key = "adapter.pos_table.table"
    if key in state and key in own and state[key].shape != own[key].shape:
        before = tuple(state[key].shape)
        state = dict(state, **{key: _interpolate_table(state[key], own[key], module)})
        grid = getattr(getattr(module, "adapter", None), "max_grid", None)
        notes.append(f"position table interpolated (bicubic, as MAE/timm) from {before} entries to "
                     f"{tuple(own[key].shape)}" + (f" (max_grid {grid} per axis; smaller inputs read its first rows: "
                                                  "set max_grid to the input's patch grid to match upstream exactly)"
                                                  if grid else ""))
    target = getattr(module, "adapter", None)
    source_spec = (config or {}).get("adapter")
    if source_spec and isinstance(getattr(target, "groups", None), list) and hasattr(target, "channels"):  # grouped channels
        source = build_adapter(source_spec)
        # channels given as a count (named by the data later) take the names of the weights
        if getattr(target, "names_pending", False) and len(source.channels) == len(target.channels):  # type: ignore
            target.adopt_names(source.channels)  # type: ignore[union-attr]
        if source.groups != target.groups or source.channels != target.channels:  # type: ignore[attr-defined]
            state = _remap_groups(state, own, source, target, notes)
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
