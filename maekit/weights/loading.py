"""Loading encoder weights from training checkpoints and exported files.

Only safe formats: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from maekit.errors import DataError

#: prefixes under which the encoder's parts sit in the kit's checkpoints
_PREFIXES = ("mae.", "model.", "")
_PARTS = ("adapter.", "encoder.")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a `.safetensors`, `.ckpt`, `.pt` or `.pth` file (a Lightning checkpoint's
    `state_dict` is unwrapped)."""
    path = Path(path)
    if path.is_dir():  # an exported model folder
        path = path / "model.safetensors"
    if not path.is_file():
        raise DataError(path, "weights file does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise DataError(path, f"is not a valid safetensors file: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise DataError(path, f"cannot be loaded safely (weights_only=True): {err}") from err
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DataError(path, "does not hold a state dict of tensors")
    return obj


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
    state = encoder_state(read_state_dict(path))
    if not state:
        raise DataError(path, "holds no encoder weights (no 'encoder.*' keys)")
    own = {k: v for k, v in module.state_dict().items() if k.startswith(_PARTS)}
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
