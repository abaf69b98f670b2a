"""Recipe defaults that follow the run: the decoder follows `--model.size` unless given, and the
effective learning rate (base_lr x batch / 256) is printed, with a warning when it is tiny."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning as L
import pytest

from maekit.backbones import DECODER_SIZES
from maekit.cli import MaekitCLI
from maekit.datasets import ChipDataModule
from maekit.domains import MultispectralAdapter
from maekit.pretrain import MAEPretrainModule

from .conftest import REPO


def decoder_params(module: MAEPretrainModule) -> int:
    return sum(p.numel() for n, p in module.mae.named_parameters() if n.startswith("decoder"))


def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> MAEPretrainModule:
    monkeypatch.setattr(sys, "argv", ["maekit"])
    cli = MaekitCLI(args=["-c", str(REPO / "configs" / "naip" / "pretrain.yaml"), "--data.root", str(tmp_path),
                          "--trainer.logger", "false", *args], run=False)
    return cli.model


def test_model_size_on_the_command_line_scales_the_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    nano = build(tmp_path, monkeypatch, "--model.size", "nano")
    spec = DECODER_SIZES["nano"]
    assert nano.mae.decoder_spec == spec and nano.mae.decoder_embed.out_features == spec.width
    assert len(nano.mae.decoder.blocks) == spec.depth
    assert decoder_params(nano) < 200_000  # not the config's 512 x 8 (25 M parameters)
    assert "decoder 64 wide, 1 deep" in capsys.readouterr().out
    # any explicit decoder setting on the command line: the decoder is the user's (the rest from the config)
    kept = build(tmp_path, monkeypatch, "--model.size", "nano", "--model.decoder_width", "48")
    assert (kept.mae.decoder_spec.width, kept.mae.decoder_spec.depth) == (48, 8)
    # without --model.size the config's decoder stands
    assert MAEPretrainModule(MultispectralAdapter(preset="naip"), "nano", decoder_width=32).mae.decoder_spec.width == 32


def test_python_default_decoder_follows_size() -> None:
    for size in ("nano", "micro"):
        module = MAEPretrainModule(MultispectralAdapter(preset="naip", patch_size=8), size)
        assert module.mae.decoder_spec == DECODER_SIZES[size]


@pytest.mark.parametrize("batch,warned", [(4, True), (64, False)])
def test_effective_lr_is_printed_and_a_tiny_one_warned(naip_chips: Path, tmp_path: Path, batch: int, warned: bool,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    base_lr = 1e-4 * (1 + hash(batch) % 7)
    module = MAEPretrainModule(MultispectralAdapter(preset="naip", patch_size=8), "nano", 32, 1, 2,
                               base_lr=base_lr, figure_every_n_epochs=0)
    data = ChipDataModule(root=str(naip_chips), preset="naip", task="classification", batch_size=batch,
                          num_workers=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=data)
    lr = base_lr * batch / 256
    assert f"learning rate {lr:.3g} = base_lr {base_lr:.3g} x effective batch {batch} / 256" in capsys.readouterr().out
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(lr)
    tiny = [w for w in caught if "linearly scaled learning rate" in str(w.message)]
    assert bool(tiny) == warned
    if warned:
        assert f"--model.lr {base_lr:.3g}" in str(tiny[0].message)
