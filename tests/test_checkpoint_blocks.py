"""Activation checkpointing of transformer blocks (`checkpoint_blocks`): the same loss and
gradients as without it, blocks really recomputed in backward, and the option carried through
the Lightning module's hyper-parameters, checkpoints, exports and `from_pretrained`."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from maekit.domains import VolumeAdapter
from maekit.pretrain import GroupDirichletMasking, MAEPretrainModule, MaskedAutoencoder
from maekit.weights import export, from_pretrained


def _model(checkpoint_blocks: bool, decoder_reads: list[int] | None) -> MaskedAutoencoder:
    return MaskedAutoencoder(VolumeAdapter(modalities=["t1", "t2", "flair"], patch_size=4, norm_pix_loss=True),
                             size="nano", decoder_width=32, decoder_depth=2, decoder_heads=2,
                             masking=GroupDirichletMasking(0.7, 3), drop_path=0.3, decoder_reads=decoder_reads,
                             checkpoint_blocks=checkpoint_blocks)


def _count_block_calls(model: MaskedAutoencoder) -> list[int]:
    calls = [0]
    for block in [*model.encoder.blocks, *model.decoder.blocks]:
        block.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("decoder_reads", [None, [1, 2]])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(decoder_reads: list[int] | None) -> None:
    torch.manual_seed(11)
    plain, checkpointed = _model(False, decoder_reads), _model(True, decoder_reads)
    with torch.no_grad():  # random parameters everywhere (not the zero biases / unit norms of init)
        for p in plain.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    checkpointed.load_state_dict(plain.state_dict())
    plain.train(), checkpointed.train()
    present = torch.rand(3, 3) > 0.3
    present[:, 0] = True
    batch = {"image": torch.randn(3, 3, 8, 12, 8), "modality_present": present}
    outputs = []
    for model in (plain, checkpointed):
        calls = _count_block_calls(model)
        torch.manual_seed(5)  # the same masks and drop-path draws
        out = model(batch)
        out.loss.backward()
        blocks = len(model.encoder.blocks) + len(model.decoder.blocks)
        # checkpointed blocks run again in backward (a pre-hook fires on each recomputation)
        assert calls[0] == (2 * blocks if model is checkpointed else blocks)
        outputs.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = outputs
    assert torch.allclose(loss_a, loss_b, rtol=1e-6, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        assert grad is not None and grad.abs().sum() > 0, name
        assert torch.allclose(grad, grads_b[name], rtol=1e-5, atol=1e-7), name


def test_checkpointing_is_off_outside_training() -> None:
    torch.manual_seed(0)
    model = _model(True, None).eval()
    calls = _count_block_calls(model)
    batch = {"image": torch.randn(2, 3, 8, 8, 8)}
    model(batch).loss.backward()  # eval mode: no recomputation even with gradients on
    blocks = len(model.encoder.blocks) + len(model.decoder.blocks)
    assert calls[0] == blocks
    model.train()
    with torch.no_grad():
        model(batch)
    assert calls[0] == 2 * blocks


def test_checkpoint_blocks_round_trips_through_checkpoint_export_and_from_pretrained(tmp_path: Path) -> None:
    torch.manual_seed(1)
    module = MAEPretrainModule(VolumeAdapter(modalities=["t1", "t2"], patch_size=4), size="nano", decoder_width=32,
                               decoder_depth=1, decoder_heads=2, lr=1e-3, checkpoint_blocks=True)
    assert module.mae.encoder.checkpoint_blocks and module.mae.decoder.checkpoint_blocks
    data = [{"image": x} for x in torch.randn(4, 2, 8, 8, 8)]  # one batch of 4 cases
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=4))
    path = tmp_path / "pre.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=False)["maekit"]["checkpoint_blocks"] is True
    adapter = VolumeAdapter(modalities=["t1", "t2"], patch_size=4)
    reloaded = MAEPretrainModule.load_from_checkpoint(path, adapter=adapter, weights_only=False)
    assert reloaded.mae.encoder.checkpoint_blocks and reloaded.mae.decoder.checkpoint_blocks
    out = export(path, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["checkpoint_blocks"] is True
    full = from_pretrained(out, full=True)
    assert full.encoder.checkpoint_blocks and full.decoder.checkpoint_blocks
    assert from_pretrained(out).encoder.checkpoint_blocks
    off = MAEPretrainModule(VolumeAdapter(modalities=["t1", "t2"], patch_size=4), size="nano", decoder_width=32,
                            decoder_depth=1, decoder_heads=2)
    meta: dict = {}
    off.on_save_checkpoint(meta)
    assert meta["maekit"]["checkpoint_blocks"] is False and not off.mae.encoder.checkpoint_blocks
