"""Which parameters take weight decay, read from the optimiser that `configure_optimizers` built
during a real (one-step) fit: biases, norms, tokens, position tables and group embeddings take
none, in pretraining and in fine-tuning alike (MAE / timm); every other weight decays."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from maekit.datasets import ChipDataModule
from maekit.domains import MultispectralAdapter
from maekit.finetune import ClassificationTask
from maekit.pretrain import MAEPretrainModule, RandomMasking

#: name parts of multi-dimensional parameters that must not decay
NO_DECAY_PARTS = ("cls_token", "cls_pos", "mask_token", "pos_table", "group_embed", "decoder_group")


class RecordDecay(L.Callback):
    """Keeps each trainable parameter's weight decay, by name, as the optimiser holds it."""

    def __init__(self) -> None:
        self.decay: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        by_id = {id(p): name for name, p in pl_module.named_parameters()}
        for group in trainer.optimizers[0].param_groups:
            for p in group["params"]:
                self.decay[by_id[id(p)]] = group["weight_decay"]


def fit_once(module: L.LightningModule, root: Path, tmp_path: Path) -> dict[str, float]:
    record = RecordDecay()
    data = ChipDataModule(root=str(root), preset="naip", task="classification", batch_size=4, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    return record.decay


def check(decay: dict[str, float], module: nn.Module, weight_decay: float) -> None:
    params = dict(module.named_parameters())
    assert set(decay) == {n for n, p in params.items() if p.requires_grad}
    for name, value in decay.items():
        expected_none = params[name].ndim <= 1 or any(part in name for part in NO_DECAY_PARTS)
        assert value == (0.0 if expected_none else weight_decay), name
    # the set is not trivially everything or nothing
    assert {v for v in decay.values()} == {0.0, weight_decay}


@pytest.mark.parametrize("position", ["learned", "sincos"])
def test_fine_tuning_does_not_decay_tokens_or_positions(naip_chips: Path, tmp_path: Path, position: str) -> None:
    weight_decay = float(torch.empty(()).uniform_(0.01, 0.3))
    adapter = MultispectralAdapter(preset="naip", patch_size=8, position=position, max_grid=8)
    task = ClassificationTask(adapter, num_classes=4, size="nano", class_token=True, pooling="cls",
                              weight_decay=weight_decay, layer_decay=0.8)
    decay = fit_once(task, naip_chips, tmp_path)
    for name in ("encoder.cls_token", "encoder.cls_pos", "adapter.group_embed.weight"):
        assert decay[name] == 0.0, name
    if position == "learned":
        assert decay["adapter.pos_table.table"] == 0.0
    assert decay["encoder.blocks.0.attn.qkv.weight"] == weight_decay
    check(decay, task, weight_decay)


def test_pretraining_no_decay_set(naip_chips: Path, tmp_path: Path) -> None:
    weight_decay = float(torch.empty(()).uniform_(0.01, 0.3))
    adapter = MultispectralAdapter(preset="naip", patch_size=8, position="learned", max_grid=8)
    module = MAEPretrainModule(adapter, size="nano", decoder_width=32, decoder_depth=1, decoder_heads=2,
                               masking=RandomMasking(0.75), weight_decay=weight_decay, figure_every_n_epochs=0)
    decay = fit_once(module, naip_chips, tmp_path)
    for name in ("mae.mask_token", "mae.decoder_group.weight", "mae.adapter.pos_table.table",
                 "mae.adapter.group_embed.weight", "mae.encoder.norm.weight", "mae.decoder_embed.bias"):
        assert decay[name] == 0.0, name
    assert decay["mae.decoder_pred.weight"] == weight_decay
    check(decay, module, weight_decay)
