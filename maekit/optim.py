"""Optimiser set-up shared by pretraining and fine-tuning: AdamW groups, layer decay, schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from maekit.errors import ConfigError


#: name parts that wrappers insert: FSDP units, activation checkpointing, torch.compile
WRAPPER_NAME_PARTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


def unwrapped_name(name: str) -> str:
    """A parameter's name as in the bare model, without the parts wrappers insert."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_NAME_PARTS)


def parameter_ranks(model: nn.Module) -> dict[str, int]:
    """Each parameter's number of dimensions by unwrapped name. Record it before FSDP wraps the
    model: FSDP with `use_orig_params` shows every parameter as a flat 1-D shard afterwards."""
    return {unwrapped_name(name): param.ndim for name, param in model.named_parameters()}


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_names: Iterable[str] = (),
    layer_of: Callable[[str], int] | None = None,
    num_layers: int = 0,
    layer_decay: float = 1.0,
    ranks: Mapping[str, int] | None = None,
) -> list[dict]:
    """AdamW parameter groups.

    Biases, norm weights (any 1-D parameter) and the names in `no_decay_names` get no weight
    decay. With `layer_of` and `layer_decay` < 1, a parameter at layer i (0 = embeddings,
    `num_layers` = head) gets its lr scaled by `layer_decay ** (num_layers - i)` (layer-wise lr
    decay, BEiT/MAE fine-tuning). Frozen parameters are left out. Names are matched without
    wrapper parts (FSDP, checkpointing, compile); `ranks` (from `parameter_ranks` before
    wrapping) gives the true dimensions of parameters FSDP has flattened.
    """
    skip = set(no_decay_names)
    groups: dict[tuple[int, bool], dict] = {}
    for wrapped_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = unwrapped_name(wrapped_name)
        ndim = ranks.get(name, param.ndim) if ranks is not None else param.ndim
        no_decay = ndim <= 1 or name in skip or name.endswith(".bias")
        layer = layer_of(name) if layer_of is not None else num_layers
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (num_layers - layer),
            }
        groups[key]["params"].append(param)
    return list(groups.values())


def build_adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over `groups` with the fused kernel (CUDA and CPU, float params); each group's lr
    is `lr * lr_scale`."""
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    params = [p for g in groups for p in g["params"]]
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fusable or None)


def lightning_schedule(trainer: Any, optimizer: torch.optim.Optimizer, warmup_epochs: float) -> dict[str, Any]:
    """Warm-up + cosine over the whole run of a Lightning `trainer`, stepped per optimiser step.

    Works with `max_epochs` or `max_steps`: steps per epoch come from the training loader.
    """
    batches = _batches_per_epoch(trainer)
    per_epoch = max(1, math.ceil(batches / max(1, trainer.accumulate_grad_batches))) if batches != math.inf else math.inf
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
    total = per_epoch * epochs if per_epoch != math.inf else math.inf
    if trainer.max_steps not in (None, -1):
        total = min(total, trainer.max_steps)
    if total == math.inf:
        raise ValueError("the learning-rate schedule needs a run length: set trainer.max_steps or a sized loader")
    per_epoch = total if per_epoch == math.inf else per_epoch
    scheduler = warmup_cosine(optimizer, int(warmup_epochs * per_epoch), max(1, int(total)))
    return {"scheduler": scheduler, "interval": "step"}


def _batches_per_epoch(trainer: Any) -> float:
    """Training batches per epoch on this rank, without making the trainer load its training data.

    (`trainer.estimated_stepping_batches` would: before a checkpoint is restored, which keeps a
    resumed run from restoring its loader's position.)"""
    if trainer.train_dataloader is not None:
        return float(trainer.num_training_batches)
    loader = training_loader_of(trainer)
    try:
        length = float(len(loader))
    except TypeError:  # an iterable without a length
        return math.inf
    dataset = getattr(loader, "dataset", None)
    if isinstance(loader, torch.utils.data.DataLoader) and not isinstance(dataset, torch.utils.data.IterableDataset):
        length = float(math.ceil(length / max(1, trainer.world_size)))  # Lightning will shard it by rank
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        length = min(length, float(limit))
    elif limit is not None and length != math.inf:
        length = float(int(length * limit))
    return max(1.0, length)


def training_loader_of(trainer: Any) -> Any:
    """The trainer's training loader: the one it has loaded, else a fresh one from wherever `fit`
    was told to take it (datamodule, module, or loaders passed to `fit` directly)."""
    if trainer.train_dataloader is not None:
        return trainer.train_dataloader
    return trainer.fit_loop._data_source.dataloader()


def per_device_batch_size(trainer: Any) -> int:
    """Samples per training batch on one device: the datamodule's `batch_size`, else the
    training loader's. Raises `ConfigError` when neither says (nothing is guessed)."""
    datamodule = getattr(trainer, "datamodule", None)
    size = getattr(datamodule, "batch_size", None)
    where = f"the datamodule {type(datamodule).__name__}" if datamodule is not None else "fit's training data"
    if size is None:
        loader = training_loader_of(trainer)
        size = getattr(loader, "batch_size", None)
        if size is None:  # a DataLoader built from a batch sampler
            size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
        where += f" (training loader {type(loader).__name__})"
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"base_lr is a learning rate per 256 samples, and {where} has no integer `batch_size` "
                          f"(got {size!r}) to scale it by: set an absolute learning rate (--model.lr) or give the "
                          "datamodule a `batch_size` attribute")
    return size


def effective_batch_size(trainer: Any) -> int:
    """Samples per optimiser step over the whole run: per-device batch x gradient accumulation x
    devices x nodes (`trainer.world_size` is devices x nodes)."""
    return per_device_batch_size(trainer) * trainer.accumulate_grad_batches * trainer.world_size


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr, then half-cosine down to `min_ratio` of it (stepped per batch)."""
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
