"""The one reader of weights on disk: kit checkpoints (`.ckpt`), exported folders, and
`.safetensors` / `.pth` / `.pt` / `.bin` files of the kit or of public projects.

Only safe formats are read: safetensors, or `torch.load(weights_only=True)`. Everything else in
`maekit.weights` reads files through `read_weights` (and `read_checkpoint` where a kit training
checkpoint is required), so a format is parsed in one place. Imports run one way:
`formats` <- `loading` <- `hub`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from maekit.errors import ConfigError, DataError
from maekit.files import write_text_atomic
from maekit.tokens import DomainAdapter

#: a kit checkpoint's adapter + encoder sit under one of these prefixes
_PREFIXES = ("mae.", "model.", "")
_PARTS = ("adapter.", "encoder.")


@dataclass
class WeightsFile:
    """What a weights file holds.

    state: its tensors (a Lightning checkpoint's `state_dict`; the `model` / `base_model` of a
        public training script's file).
    config: the kit's model description (a checkpoint's `maekit` entry, an exported
        `config.json`), or None for a public file.
    upstream_config: a `config.json` beside a public checkpoint that is not the kit's (e.g. a
        Prithvi release's, which records `num_frames`), else None.
    kind: "checkpoint" (kit Lightning checkpoint), "exported" (folder or safetensors + kit
        config.json) or "plain" (any other tensors: public layouts, bare state dicts).
    """

    path: Path
    state: dict[str, Tensor]
    config: dict[str, Any] | None
    upstream_config: dict[str, Any] | None
    kind: str


def refuse_sharded_checkpoint(path: Path) -> None:
    """A `DataError` with the merge command if `path` is a sharded (FSDP) checkpoint folder."""
    if path.is_dir() and (path / ".metadata").is_file():
        raise DataError(path, "is a sharded checkpoint folder (FSDP with `state_dict_type: sharded`); merge it "
                              "into one file first: `python -m lightning.pytorch.utilities.consolidate_checkpoint "
                              f"{path}` writes {path}.consolidated, which maekit reads")


def _torch_load(path: Path) -> Any:
    try:  # training scripts of public MAEs save their argparse arguments beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise DataError(path, f"cannot be loaded safely (weights_only=True): {err}") from err


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint of the kit, loaded safely (`weights_only=True`)."""
    path = Path(path)
    if path.is_dir():
        refuse_sharded_checkpoint(path)
        raise DataError(path, "is a folder, not a checkpoint file")
    if not path.is_file():
        raise DataError(path, "checkpoint does not exist")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(path, "is not a Lightning checkpoint (no state_dict)")
    if "maekit" not in ckpt:
        raise DataError(path, "was not written by a maekit module (no model description); re-save it with this version")
    return ckpt


def _sidecar(path: Path) -> dict[str, Any] | None:
    config_path = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(config_path, f"is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise DataError(config_path, "is not a JSON object")
    return config


def is_kit_config(config: dict[str, Any] | None) -> bool:
    """Whether a config.json is the kit's model description (it names an adapter)."""
    return isinstance(config, dict) and isinstance(config.get("adapter"), dict)


def read_weights(path: str | Path) -> WeightsFile:
    """Read any weights file or exported folder the kit accepts (see the module docstring)."""
    path = Path(path)
    sidecar = _sidecar(path) if path.exists() else None
    kit = sidecar if is_kit_config(sidecar) else None
    upstream = None if kit is not None else sidecar
    if path.is_dir():
        refuse_sharded_checkpoint(path)
        if kit is None or not (path / "model.safetensors").is_file():
            raise DataError(path, "is not an exported model folder (needs config.json and model.safetensors)")
        return WeightsFile(path, _load_safetensors(path / "model.safetensors"), kit, None, "exported")
    if not path.is_file():
        raise DataError(path, "weights file does not exist")
    if path.suffix == ".safetensors":
        return WeightsFile(path, _load_safetensors(path), kit, upstream, "exported" if kit else "plain")
    obj = _torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # Lightning checkpoint
        config = obj.get("maekit")
        state = obj["state_dict"]
        if config is not None:
            prefix = config.get("prefix")
            if prefix is not None:  # the kit records where its adapter + encoder sit
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            state = {k.replace("._orig_mod.", "."): v for k, v in state.items()}
        _check_tensors(path, state)
        return WeightsFile(path, state, config, upstream, "checkpoint" if config is not None else "plain")
    for key in ("model", "base_model"):  # facebookresearch/mae, SatMAE; Point-MAE
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    _check_tensors(path, obj)
    return WeightsFile(path, obj, None, upstream, "plain")


def _check_tensors(path: Path, obj: Any) -> None:
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DataError(path, "does not hold a state dict of tensors")


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise DataError(path, "weights file does not exist")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise DataError(path, f"is not a valid safetensors file: {err}") from err


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a `.safetensors`, `.ckpt`, `.pt` or `.pth` file or an exported folder (a
    Lightning checkpoint's `state_dict` is unwrapped)."""
    return read_weights(path).state


def encoder_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The `adapter.*` and `encoder.*` entries of a pretraining or fine-tuning state dict."""
    state = {k.replace("._orig_mod.", "."): v for k, v in state.items()}  # torch.compile'd stacks
    for prefix in _PREFIXES:
        picked = {k[len(prefix):]: v for k, v in state.items()
                  if k.startswith(prefix) and k[len(prefix):].startswith(_PARTS)}
        if any(k.startswith("encoder.") for k in picked):
            return picked
    return {}


def build_adapter(spec: dict[str, Any]) -> DomainAdapter:
    """The adapter a model description names (`class_path` + `init_args`); only maekit's own."""
    module, _, name = spec["class_path"].rpartition(".")
    if not module.startswith("maekit."):
        raise ConfigError(f"refusing to build adapter {spec['class_path']!r}: only maekit adapters are loaded")
    cls = getattr(importlib.import_module(module), name)
    return cls(**spec.get("init_args", {}))  # bands/modalities beside init_args are descriptive only


def write_weights_folder(out_dir: str | Path, state: dict[str, Any], config: dict[str, Any], card: str,
                         file_format: str) -> Path:
    """`out_dir` with model.safetensors + config.json + README.md, written whole or not at all
    (staged beside it, then renamed); an existing non-empty folder is refused."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(out_dir, "already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        save_file(state, str(staging / "model.safetensors"), metadata={"format": file_format})
        write_text_atomic(staging / "config.json", json.dumps(config, indent=2) + "\n")
        write_text_atomic(staging / "README.md", card)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir
