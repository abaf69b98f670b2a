"""Fully sharded training for maekit models: FSDP with one shard unit per transformer block.

    maekit fit -c ct/pretrain --trainer.devices 8 --trainer.strategy fsdp_blocks
    maekit fit -c ct/pretrain --trainer.devices 8 --trainer.strategy fsdp_blocks_checkpointed
    # in Python: import maekit.strategies, then L.Trainer(strategy="fsdp_blocks", ...)

Lightning's plain `fsdp` wraps the whole model as one unit, so every rank still gathers all
weights for the forward pass. Encoders and decoders here are stacks of timm `Block`s, the unit
FSDP should shard and (optionally) recompute in the backward pass. Parameter groups stay right
under FSDP: tasks record each parameter's rank before wrapping (`maekit.optim.parameter_ranks`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
from timm.models.vision_transformer import Block
from torch import nn

from maekit.backbones.transformer import CrossAttention

#: the modules each FSDP unit holds: transformer blocks and the decoders' cross-attention layers
SHARDED_MODULES: frozenset[type] = frozenset({Block, CrossAttention})


class BlockShardedStrategy(FSDPStrategy):
    """FSDP sharding each transformer block as its own unit.

    Args:
        activation_checkpointing: recompute each block's activations in the backward pass
            (saves most activation memory for about a third more compute).
        sharding_strategy: `FULL_SHARD` (weights, gradients and optimiser state sharded),
            `SHARD_GRAD_OP` (weights kept whole between forward and backward), `HYBRID_SHARD`
            (full sharding within a node, replication across nodes) or `NO_SHARD`.
        state_dict_type: `full` (one ordinary checkpoint file, written by rank 0) or `sharded`
            (a folder of per-rank shards; faster for very large models).
        cpu_offload: keep sharded parameters and gradients in host memory.
        **kwargs: other `FSDPStrategy` / `FullyShardedDataParallel` arguments.
    """

    strategy_name = "fsdp_blocks"

    def __init__(self, activation_checkpointing: bool = False,
                 sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD",
                 state_dict_type: Literal["full", "sharded"] = "full", cpu_offload: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(auto_wrap_policy=set(SHARDED_MODULES),
                         activation_checkpointing_policy=set(SHARDED_MODULES) if activation_checkpointing else None,
                         sharding_strategy=sharding_strategy, state_dict_type=state_dict_type,
                         cpu_offload=cpu_offload, **kwargs)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | Path,
                        storage_options: Any | None = None) -> None:
        """As Lightning saves, but a sharded checkpoint folder is written beside the old one
        (`<name>.partial`) and swapped in when every rank has finished, so a kill mid-save never
        leaves a folder that mixes two steps' shards. Needs a filesystem all ranks share (as
        sharded checkpoints do anyway). Full checkpoints go through the checkpoint IO (atomic when
        run through `maekit`, which installs `AtomicCheckpointIO`)."""
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        final = Path(self.broadcast(str(filepath)))
        partial, old = final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")
        self._agree(lambda: _clear_previous_save(final, partial, old), "maekit_sharded_save_start")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("maekit_sharded_save_written")
        self._agree(lambda: _swap_in(final, partial, old), "maekit_sharded_save_swapped")

    def _agree(self, rank_zero_step: Callable[[], None], name: str) -> None:
        """Run a file step on rank 0 and raise its error on every rank (instead of leaving the
        other ranks waiting at the next barrier)."""
        problem = None
        if self.is_global_zero:
            try:
                rank_zero_step()
            except OSError as err:
                problem = f"{type(err).__name__}: {err}"
        problem = self.broadcast(problem)
        if problem is not None:
            raise OSError(f"saving a sharded checkpoint failed on rank 0: {problem}")
        self.barrier(name)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        """Wrap as Lightning does; on CPU (gloo) name the device for FSDP, which Lightning leaves
        out there, so a sharded run can be tried and tested without GPUs."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self.root_device.type == "cpu" and not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(model, cpu_offload=self.cpu_offload,
                                             mixed_precision=self.mixed_precision_config,
                                             sharding_strategy=self.sharding_strategy,
                                             device_id=torch.device("cpu"), **self.kwargs)
            self.kwargs.pop("auto_wrap_policy", None)  # applied; Lightning would warn on seeing it again
        return super()._setup_model(model)


def register_strategies() -> None:
    """Make `--trainer.strategy fsdp_blocks` (and `fsdp_blocks_checkpointed`) known to Lightning."""
    if "fsdp_blocks" in StrategyRegistry:
        return
    StrategyRegistry.register("fsdp_blocks", BlockShardedStrategy,
                              description="FSDP with one shard unit per transformer block")
    StrategyRegistry.register("fsdp_blocks_checkpointed", BlockShardedStrategy,
                              description="FSDP per transformer block, activations recomputed in backward",
                              activation_checkpointing=True)



def _clear_previous_save(final: Path, partial: Path, old: Path) -> None:
    """Before a sharded save: put back a checkpoint that a kill left renamed to `.old` (killed
    between the two renames of a swap), and remove what a killed save left behind."""
    if not final.exists() and (old / ".metadata").is_file():
        old.rename(final)
    for leftover in (partial, old):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.exists():
            leftover.unlink()


def _swap_in(final: Path, partial: Path, old: Path) -> None:
    """Replace `final` with the complete `partial` folder, keeping the previous one until then."""
    if final.exists():
        final.rename(old)
    partial.rename(final)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


register_strategies()
