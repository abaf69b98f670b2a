"""`maekit export CKPT OUT_DIR`: a training checkpoint -> a publishable folder.

`--format timm|monai` writes the other libraries' own layouts instead (`maekit.weights.ecosystem`).

The kit's folder holds `model.safetensors` (all weights of the model, under the names the kit
loads), `config.json` (how to rebuild it: adapter class and arguments, sizes, bands or
modalities, statistics, patch size, training data, metrics) and a model card `README.md`.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

from maekit.errors import ConfigError
from maekit.weights.formats import read_checkpoint, refuse_sharded_checkpoint, write_weights_folder

__all__ = ["FORMAT", "export", "model_card", "read_checkpoint", "refuse_sharded_checkpoint"]

FORMAT = "maekit-weights/1"


def export(checkpoint: str | Path, out_dir: str | Path, training_data: str = "", licence: str = "unspecified",
           name: str | None = None, format: Literal["maekit", "timm", "monai"] = "maekit",
           image_size: int | Sequence[int] | None = None, proj_type: Literal["conv", "perceptron"] = "conv") -> Path:
    """Write the publishable folder for `checkpoint`; returns it. Written to a temporary folder
    first and moved into place, so a failed export leaves no partial folder.

    `format`: `maekit` (this kit's folder, below), `timm` (a timm `VisionTransformer`) or
    `monai` (a MONAI `ViT`), see `maekit.weights.ecosystem`; `image_size` is the input size the
    timm/MONAI model is laid out for, `proj_type` MONAI's patch embedding (conv or perceptron)."""
    if format in ("timm", "monai"):
        from maekit.weights.ecosystem import export_monai, export_timm

        if format == "timm":
            return export_timm(checkpoint, out_dir, image_size)
        return export_monai(checkpoint, out_dir, image_size, proj_type)
    if format != "maekit":
        raise ConfigError(f"unknown export format {format!r}: maekit, timm or monai")
    if image_size is not None:
        raise ConfigError("image_size applies to the timm and monai formats only")

    ckpt = read_checkpoint(checkpoint)
    meta = dict(ckpt["maekit"])
    prefix = meta.pop("prefix", "")
    state = {k[len(prefix):]: v.contiguous() for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    state = {k.replace("._orig_mod.", "."): v for k, v in state.items()}
    adapter_args = meta["adapter"]["init_args"]
    channels = {k: list(meta["adapter"][k]) for k in ("bands", "modalities") if meta["adapter"].get(k)}
    stats = {k[len("adapter."):]: state[k].tolist() for k in ("adapter.mean", "adapter.std", "adapter.scale",
                                                             "adapter.offset") if k in state}
    metrics = {k: float(v) for k, v in ckpt.get("callbacks", {}).items() if isinstance(v, (int, float))}
    for key, value in ckpt.get("callbacks", {}).items():
        if isinstance(value, dict) and value.get("best_model_score") is not None:
            metrics[f"{value.get('monitor', 'best')}"] = float(value["best_model_score"])
    config = {"format": FORMAT, "name": name or Path(out_dir).name, **meta, **channels, "statistics": stats,
              "patch_size": adapter_args.get("patch_size"), "training_data": training_data,
              "epochs": ckpt.get("epoch"), "global_step": ckpt.get("global_step"), "metrics": metrics,
              "licence": licence}
    return write_weights_folder(out_dir, state, config, model_card(config), FORMAT)



def model_card(config: dict[str, Any]) -> str:
    """A short model card from an exported config."""
    adapter = config["adapter"]
    lines = [
        f"# {config['name']}", "",
        f"A maekit {config.get('task', 'model')} checkpoint: `{adapter['class_path']}` adapter, "
        f"`{config['size']}` encoder, patch size {config.get('patch_size')}.", "",
        "## Inputs", "",
    ]
    if config.get("bands"):
        lines.append(f"Bands: {', '.join(config['bands'])}.")
    if config.get("modalities"):
        lines.append(f"Modalities: {', '.join(config['modalities'])}.")
    if config.get("statistics"):
        lines += ["", "Normalisation statistics (physical units):", ""]
        lines += [f"- {k}: {', '.join(f'{v:.6g}' for v in values)}" for k, values in config["statistics"].items()]
    lines += ["", "## Training", "", f"Data: {config.get('training_data') or 'not recorded'}.",
              f"Epochs: {config.get('epochs')}, steps: {config.get('global_step')}."]
    if config.get("metrics"):
        lines += ["", "Metrics: " + ", ".join(f"{k} = {v:.4g}" for k, v in config["metrics"].items()) + "."]
    lines += ["", "## Use", "", "```python", "import maekit.weights as w",
              f"encoder = w.from_pretrained(\"path/to/{config['name']}\")", "```", "",
              f"Licence: {config.get('licence', 'unspecified')}.", ""]
    return "\n".join(lines)
