"""The wavelength-conditioned adapter: any band set with one set of weights, per-band loss,
GSD positions, export/reload through `from_pretrained`."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from maekit.domains.multispectral import WavelengthAdapter, load_sensor
from maekit.errors import ConfigError
from maekit.pretrain import MaskedAutoencoder, RandomMasking

WIDTH = 32


def built(seed: int, **kwargs: object) -> WavelengthAdapter:
    torch.manual_seed(seed)
    args = dict(sensor="sentinel2", patch_size=4, code_width=16, decoder_rank=3)
    args.update(kwargs)
    adapter = WavelengthAdapter(**args)  # type: ignore[arg-type]
    adapter.build(WIDTH)
    for p in adapter.parameters():  # every parameter random, none left at its zero init
        torch.nn.init.normal_(p, std=0.3)
    return adapter.eval()


def contract_batch(seed: int, bands: int = 5, size: int = 8) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(2, bands, size, size, generator=g),
            "wavelengths": 400 + 2000 * torch.rand(bands, generator=g),
            "bandwidths": 10 + 100 * torch.rand(bands, generator=g),
            "mean": torch.rand(bands, generator=g), "std": 0.5 + torch.rand(bands, generator=g)}


@pytest.mark.parametrize("mode", ["one", "group"])
def test_permuting_bands_with_their_wavelengths_gives_the_same_tokens(mode: str) -> None:
    seed = int(torch.randint(0, 2**31, ()))
    adapter = built(seed, tokens_per_patch=mode)
    batch = contract_batch(seed, bands=6)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed + 1))
    while bool((perm == torch.arange(6)).all()):
        perm = torch.randperm(6)
    permuted = {k: (v[:, perm] if k == "image" else v[perm]) for k, v in batch.items()}  # type: ignore[index]
    with torch.no_grad():
        a = adapter.embed(adapter.tokenize(batch))
        b = adapter.embed(adapter.tokenize(permuted))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # but moving the image's bands without their wavelengths changes the tokens
    with torch.no_grad():
        c = adapter.embed(adapter.tokenize({**batch, "image": batch["image"][:, perm]}))  # type: ignore[index]
    assert not torch.allclose(a, c, atol=1e-3)


def test_changing_one_wavelength_or_bandwidth_changes_the_output() -> None:
    seed = int(torch.randint(0, 2**31, ()))
    adapter = built(seed)
    batch = contract_batch(seed)
    with torch.no_grad():
        base = adapter.embed(adapter.tokenize(batch))
        moved = dict(batch, wavelengths=batch["wavelengths"].clone())  # type: ignore[union-attr]
        moved["wavelengths"][2] += 15.0
        wider = dict(batch, bandwidths=batch["bandwidths"] * 1.5)  # type: ignore[operator]
        unknown = {k: v for k, v in batch.items() if k != "bandwidths"}
        for other in (moved, wider, unknown):
            assert not torch.allclose(base, adapter.embed(adapter.tokenize(other)), atol=1e-4)


@pytest.mark.parametrize("mode", ["one", "group"])
def test_round_trip_and_band_names_from_the_sensor(mode: str) -> None:
    seed = int(torch.randint(0, 2**31, ()))
    adapter = built(seed, tokens_per_patch=mode)
    s2 = load_sensor("sentinel2")
    names = ["B04", "B11", "B02", "B08"]
    raw = torch.randint(1, 5000, (2, 4, 8, 8), generator=torch.Generator().manual_seed(seed)).float()
    tokens = adapter.tokenize({"image": raw, "bands": names})
    idx = [s2.band_names.index(n) for n in names]
    mean, std = torch.tensor(s2.mean)[idx], torch.tensor(s2.std)[idx]
    expected = (raw * 1e-4 - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(adapter.untokenize(tokens.values, tokens), expected, rtol=1e-5, atol=1e-5)
    assert tokens.num_tokens == 4 * (3 if mode == "group" else 1)  # visible, NIR, SWIR regions
    # names and the same wavelengths/statistics by hand give the same tokens
    by_hand = {"image": raw * 1e-4, "wavelengths": [s2.band(n).wavelength_nm for n in names],
               "bandwidths": [s2.band(n).bandwidth_nm for n in names], "mean": mean, "std": std}
    with torch.no_grad():
        torch.testing.assert_close(adapter.embed(tokens), adapter.embed(adapter.tokenize(by_hand)))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_is_a_mean_over_bands_so_sensors_weigh_the_same(norm_pix: bool) -> None:
    seed = int(torch.randint(0, 2**31, ()))
    adapter = built(seed, norm_pix_loss=norm_pix, tokens_per_patch="group")
    batch = contract_batch(seed, bands=7)
    batch["wavelengths"] = torch.tensor([450.0, 500.0, 560.0, 650.0, 680.0, 1600.0, 842.0])  # groups of 5, 1, 1
    tokens = adapter.tokenize(batch)
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(*tokens.values.shape[:2], adapter.token_size, generator=g)
    loss = adapter.loss(pred, adapter.target(tokens), tokens)
    assert loss.shape == tokens.present.shape
    # by hand: each group token's error is the mean over its real bands of the per-band pixel mean
    values = adapter.values_from_prediction(pred, tokens).reshape(2, 3, 4, 5, 16)
    true = tokens.values.reshape(2, 3, 4, 5, 16)
    expected = []
    for group, count in enumerate([5, 1, 1]):  # slots: visible 5 bands, NIR 1, SWIR 1 (rest padding)
        t, v = true[:, group, :, :count], values[:, group, :, :count]
        if norm_pix:
            mean, std = t.mean(-1, keepdim=True), (t.var(-1, keepdim=True) + 1e-6).sqrt()
            t, v = (t - mean) / std, (v - mean) / std
        expected.append((v - t).square().mean(-1).mean(-1))
    torch.testing.assert_close(loss, torch.cat(expected, 1), rtol=1e-4, atol=1e-5)


def test_unknown_band_and_missing_sensor_are_clear_errors() -> None:
    adapter = built(0)
    with pytest.raises(ConfigError, match="band 'SWIR9' has no known wavelength"):
        adapter.tokenize({"image": torch.zeros(1, 2, 8, 8), "bands": ["B04", "SWIR9"]})
    bare = WavelengthAdapter(sensor=None, patch_size=4)
    bare.build(WIDTH)
    with pytest.raises(ConfigError, match="no sensor"):
        bare.tokenize({"image": torch.zeros(1, 2, 8, 8), "bands": ["R", "G"]})
    with pytest.raises(ConfigError, match="wavelengths has 2 values but the image has 3 bands"):
        bare.tokenize({"image": torch.zeros(1, 3, 8, 8), "wavelengths": [500, 600]})
    with pytest.raises(ConfigError, match="wavelengths must be positive"):
        bare.tokenize({"image": torch.zeros(1, 2, 8, 8), "wavelengths": [500, -1]})
    with pytest.raises(ConfigError, match="has no known wavelength"):
        WavelengthAdapter(sensor="naip", bands=["R", "B11"])


def test_gsd_positions_scale_with_metres() -> None:
    seed = int(torch.randint(0, 2**31, ()))
    adapter = built(seed, gsd_positions=True, reference_gsd_m=10.0)
    batch = contract_batch(seed)
    gsd = float(torch.rand(()) * 50 + 1)
    t = adapter.tokenize({**batch, "gsd_m": gsd})
    torch.testing.assert_close(t.coords[0, 1], torch.tensor([0.0, gsd / 10.0]))
    plain = built(seed).tokenize(batch)
    assert torch.equal(plain.coords[0, 1], torch.tensor([0.0, 1.0]))
    # the sensor's GSD when the batch gives none: Landsat's 30 m patches sit 3 reference units apart
    ls = built(seed, sensor="landsat8", gsd_positions=True)
    t = ls.tokenize({"image": torch.rand(1, 8, 8, 8) * 4e4})
    torch.testing.assert_close(t.coords[0, 1], torch.tensor([0.0, 3.0]))
    with pytest.raises(ConfigError, match="gsd_positions needs"):
        built(seed, sensor=None, gsd_positions=True).tokenize(batch)


def test_trained_on_naip_then_runs_on_subsets_and_unseen_sensors() -> None:
    """A few optimiser steps on NAIP's 4 bands; then the same weights embed RGB only, Sentinel-2's
    13 bands, and bands given by wavelength alone, and the loss went down on NAIP."""
    torch.manual_seed(0)
    adapter = WavelengthAdapter(sensor="naip", patch_size=4, code_width=16, decoder_rank=3, bandwidth_dropout=0.0)
    mae = MaskedAutoencoder(adapter, size="nano", decoder_width=16, decoder_depth=1, decoder_heads=2,
                            masking=RandomMasking(0.5))
    g = torch.Generator().manual_seed(1)
    ramp = torch.linspace(0, 1, 16)
    smooth = (ramp[None, :] + ramp[:, None])[None, None] * torch.tensor([120.0, 90.0, 60.0, 200.0])[None, :, None, None]
    image = (smooth + 20 * torch.rand(8, 4, 16, 16, generator=g)).round()
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    losses = []
    for step in range(25):
        torch.manual_seed(step)
        out = mae({"image": image})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert sum(losses[-5:]) < sum(losses[:5])
    mae.eval()
    with torch.no_grad():
        rgb = mae.adapter.tokenize({"image": image[:, :3], "bands": ["R", "G", "B"]})
        assert torch.isfinite(mae.encoder(mae.adapter.embed(rgb))).all()
        s2 = {"image": torch.rand(2, 13, 16, 16) * 3000, "bands": load_sensor("sentinel2").band_names}
        bad = WavelengthAdapter(sensor="sentinel2", patch_size=4, code_width=16, decoder_rank=3)
        bad.build(mae.encoder.width)
        bad.load_state_dict(mae.adapter.state_dict())
        assert torch.isfinite(mae.encoder(bad.embed(bad.eval().tokenize(s2)))).all()
        unseen = mae.adapter.tokenize({"image": torch.randn(2, 2, 16, 16), "wavelengths": [1610.0, 11000.0]})
        assert torch.isfinite(mae.encoder(mae.adapter.embed(unseen))).all()


def test_lightning_fit_export_and_from_pretrained(tmp_path: Path) -> None:
    """Train one step through Lightning on NAIP chips, export, reload: the reloaded encoder
    gives the trained one's features for band names and for wavelengths."""
    from maekit.domains.multispectral import ChipDataModule, make_chip_dataset
    from maekit.pretrain import MAEPretrainModule
    from maekit.weights import from_pretrained
    from maekit.weights.export import export

    data = make_chip_dataset(tmp_path / "chips", "naip", "classification", per_class=2, val_per_class=1, size=16, seed=3)
    dm = ChipDataModule(str(data), preset="naip", bands=["NIR", "R", "G"], task="pretrain", batch_size=2)
    torch.manual_seed(0)
    module = MAEPretrainModule(WavelengthAdapter(sensor="naip", patch_size=8, code_width=16, decoder_rank=2),
                               size="nano", decoder_width=16, decoder_depth=1, decoder_heads=2,
                               figure_every_n_epochs=0, warmup_epochs=0)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert module.adapter.input_bands == ["NIR", "R", "G"]  # taken from the datamodule
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    folder = export(ckpt, tmp_path / "exported")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    encoder = from_pretrained(folder)
    x = torch.rand(2, 3, 16, 16) * 255
    batch = {"image": x, "bands": ["R", "G", "B"]}
    trained = module.mae.eval()
    with torch.no_grad():
        want = trained.encoder(trained.adapter.embed(trained.adapter.tokenize(batch)))
        got, _ = encoder(batch)
        torch.testing.assert_close(got, want)
        by_wavelength, _ = encoder({"image": torch.randn(2, 3, 16, 16), "wavelengths": [665, 560, 490]})
        assert by_wavelength.shape == got.shape
    with pytest.raises(ConfigError, match="band 'SWIR' has no known wavelength"):
        encoder({"image": x[:, :2], "bands": ["R", "SWIR"]})
