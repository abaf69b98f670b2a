"""One model for any sensor, any dates and any band subset (`TemporalWavelengthAdapter`):
band order, absent dates, subsets of bands and dates with the same weights, tube masking, the
per-band loss across frames, export and `from_pretrained`."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from maekit.domains.multispectral import TemporalWavelengthAdapter, WavelengthAdapter
from maekit.domains.multispectral.temporal import pair_code
from maekit.errors import ConfigError
from maekit.pretrain import MaskedAutoencoder, RandomMasking, TubeMasking
from maekit.pretrain.masking import Visible

WIDTH = 32


def seed_now() -> int:
    return int(torch.randint(0, 2**31, ()))


def built(seed: int, **kwargs: object) -> TemporalWavelengthAdapter:
    """An adapter with every parameter random (none left at its zero / 0.1 init)."""
    torch.manual_seed(seed)
    args = dict(sensor="sentinel2", patch_size=4, code_width=16, decoder_rank=3, location_encoding=True)
    args.update(kwargs)
    adapter = TemporalWavelengthAdapter(**args)  # type: ignore[arg-type]
    adapter.build(WIDTH)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return adapter.eval()


def series(seed: int, bands: int = 6, frames: int = 4, size: int = 8, stats: bool = True) -> dict[str, torch.Tensor]:
    """A random any-sensor time series: (2, T, C, H, W) with wavelengths, dates and lat/lon."""
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.rand(2, frames, bands, size, size, generator=g),
             "wavelengths": 400 + 2000 * torch.rand(bands, generator=g),
             "bandwidths": 10 + 100 * torch.rand(bands, generator=g),
             "dates": torch.stack([torch.randint(2015, 2026, (2, frames), generator=g),
                                   torch.randint(1, 366, (2, frames), generator=g)], -1),
             "latlon": torch.stack([torch.rand(2, generator=g) * 180 - 90, torch.rand(2, generator=g) * 360 - 180], -1)}
    if stats:
        batch["mean"] = torch.rand(bands, generator=g)
        batch["std"] = 0.5 + torch.rand(bands, generator=g)
    return batch


def encoder_for(adapter: TemporalWavelengthAdapter, seed: int) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    mae = MaskedAutoencoder(adapter, size="nano", decoder_width=16, decoder_depth=1, decoder_heads=2)
    for p in mae.encoder.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return mae.eval()


@pytest.mark.parametrize("mode", ["one", "group"])
def test_permuting_bands_with_their_wavelengths_leaves_tokens_and_loss_unchanged(mode: str) -> None:
    seed = seed_now()
    adapter = built(seed, tokens_per_patch=mode)
    batch = series(seed)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed + 1))
    while bool((perm == torch.arange(6)).all()):
        perm = torch.randperm(6)
    permuted = {k: (v[:, :, perm] if k == "image" else v[perm] if k in ("wavelengths", "bandwidths", "mean", "std")
                    else v) for k, v in batch.items()}
    mae = encoder_for(adapter, seed)
    with torch.no_grad():
        ta, tb = adapter.tokenize(batch), adapter.tokenize(permuted)
        torch.testing.assert_close(adapter.embed(ta), adapter.embed(tb), rtol=1e-4, atol=1e-5)
        # the same masking on both: the per-band loss over the frames does not see the order
        visible = RandomMasking(0.5)(ta)
        la, lb = mae(batch, visible=visible), mae(permuted, visible=visible)
        torch.testing.assert_close(la.per_token, lb.per_token, rtol=1e-4, atol=1e-5)
        # and the reconstruction comes back in each batch's own band order, frame by frame
        back = adapter.untokenize(adapter.values_from_prediction(lb.pred, tb), tb)
        want = adapter.untokenize(adapter.values_from_prediction(la.pred, ta), ta)[:, :, perm]
        torch.testing.assert_close(back, want, rtol=1e-4, atol=1e-4)
        # moving the image's bands without their wavelengths changes the tokens
        moved = adapter.embed(adapter.tokenize({**batch, "image": batch["image"][:, :, perm]}))
    assert not torch.allclose(adapter.embed(ta), moved, atol=1e-3)


@pytest.mark.parametrize("stats", [True, False])
def test_an_absent_date_is_the_same_as_dropping_it(stats: bool) -> None:
    """Features of the present tokens with one date marked absent equal those of the series
    with that date left out (any position; dates, lat/lon, weights random). Without `mean`/`std`
    the per-band statistics are taken over the present dates only."""
    seed = seed_now()
    frames = 4
    adapter = built(seed, tokens_per_patch="group")
    mae = encoder_for(adapter, seed)
    batch = series(seed, frames=frames, stats=stats)
    gone = int(torch.randint(0, frames, (), generator=torch.Generator().manual_seed(seed + 2)))
    present = torch.ones(2, frames, dtype=torch.bool)
    present[:, gone] = False
    keep = [i for i in range(frames) if i != gone]
    marked = {**batch, "date_present": present,
              "image": batch["image"].clone().index_fill_(1, torch.tensor([gone]), 7.0)}  # garbage at the absent date
    dropped = {**batch, "image": batch["image"][:, keep], "dates": batch["dates"][:, keep]}
    with torch.no_grad():
        tm, td = adapter.tokenize(marked), adapter.tokenize(dropped)
        fm = mae.encoder(adapter.embed(tm), tm.present)
        fd = mae.encoder(adapter.embed(td), td.present if td.may_be_absent else None)
    per_frame = tm.num_tokens // frames
    assert not tm.present.reshape(2, frames, per_frame)[:, gone].any()
    ours = fm.reshape(2, frames, per_frame, -1)[:, keep].reshape(2, -1, fm.shape[-1])
    torch.testing.assert_close(ours, fd, rtol=1e-4, atol=1e-4)


def test_a_subset_of_bands_and_dates_runs_with_the_same_weights() -> None:
    """One adapter, trained shapes or not: a random band subset on a random date subset trains
    (finite loss, gradients into the band-code network and the date scale), reconstructs the
    bands it was fed, and each date's tokens are the single-date adapter's tokens of that date
    plus its date and location code (the time terms are the only addition)."""
    seed = seed_now()
    g = torch.Generator().manual_seed(seed)
    adapter = built(seed).train()
    mae = MaskedAutoencoder(adapter, size="nano", decoder_width=16, decoder_depth=1, decoder_heads=2,
                            masking=TubeMasking(0.6))
    full = series(seed, bands=7, frames=5)
    bands = sorted(torch.randperm(7, generator=g)[: int(torch.randint(2, 6, (), generator=g))].tolist())
    dates = sorted(torch.randperm(5, generator=g)[: int(torch.randint(1, 4, (), generator=g))].tolist())
    sub = {"image": full["image"][:, dates][:, :, bands], "dates": full["dates"][:, dates],
           "latlon": full["latlon"], **{k: full[k][bands] for k in ("wavelengths", "bandwidths", "mean", "std")}}
    adapter.bandwidth_dropout = 0.0
    out = mae(sub)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert adapter.code[0].weight.grad is not None and adapter.time_scale.grad is not None
    assert adapter.values_from_prediction(out.pred, out.tokens).shape == out.tokens.values.shape
    assert adapter.untokenize(out.tokens.values, out.tokens).shape == sub["image"].shape
    # the same weights in a single-date adapter give each frame's tokens, less the time terms
    single = WavelengthAdapter(sensor="sentinel2", patch_size=4, code_width=16, decoder_rank=3)
    width = adapter.embed_dim  # the MAE built it at its encoder's width
    single.build(width)
    missing, unexpected = single.load_state_dict(adapter.state_dict(), strict=False)
    assert not missing and set(unexpected) == {"time_scale", "location_scale"}
    adapter.eval(), single.eval()
    with torch.no_grad():
        tokens = adapter.tokenize(sub)
        x = adapter.embed(tokens).reshape(2, len(dates), -1, width)
        for i in range(len(dates)):
            frame = {k: v for k, v in sub.items() if k not in ("image", "dates", "latlon")}
            want = single.embed(single.tokenize({**frame, "image": sub["image"][:, i]}))
            code = (adapter.time_scale * pair_code(width, *sub["dates"][:, i].float().T)
                    + adapter.location_scale * pair_code(width, *sub["latlon"].float().T))
            torch.testing.assert_close(x[:, i], want + code[:, None], rtol=1e-4, atol=1e-5)
        # one undated chip (B, C, H, W) is one frame: the single-date tokens exactly
        chip = {**{k: sub[k] for k in ("wavelengths", "bandwidths", "mean", "std")}, "image": sub["image"][:, 0]}
        torch.testing.assert_close(adapter.embed(adapter.tokenize(chip)), single.embed(single.tokenize(chip)))


def test_each_dates_per_band_loss_and_reconstruction_are_the_single_date_adapters() -> None:
    """Across frames, the wavelength-conditioned head reads each date's own band layout: per
    token loss, target and reconstruction of every date equal the single-date adapter's on that
    date (one token per spectral group, so a frame holds several token groups; prediction random)."""
    seed = seed_now()
    adapter = built(seed, tokens_per_patch="group", norm_pix_loss=bool(seed % 2))
    single = WavelengthAdapter(sensor="sentinel2", patch_size=4, code_width=16, decoder_rank=3,
                               tokens_per_patch="group", norm_pix_loss=bool(seed % 2))
    single.build(WIDTH)
    single.load_state_dict(adapter.state_dict(), strict=False)
    single.eval()
    frames = 3
    batch = series(seed, bands=7, frames=frames)
    batch["wavelengths"] = torch.tensor([490.0, 560, 665, 705, 842, 1610, 2190])[torch.randperm(7)]
    with torch.no_grad():
        tokens = adapter.tokenize(batch)
        pred = torch.randn(2, tokens.num_tokens, adapter.token_size, generator=torch.Generator().manual_seed(seed))
        target = adapter.target(tokens)
        loss = adapter.loss(pred, target, tokens).reshape(2, frames, -1)
        values = adapter.values_from_prediction(pred, tokens).reshape(2, frames, -1, target.shape[-1])
        shaped = pred.reshape(2, frames, -1, pred.shape[-1])
        for i in range(frames):
            frame = single.tokenize({**{k: batch[k] for k in ("wavelengths", "bandwidths", "mean", "std")},
                                     "image": batch["image"][:, i]})
            assert frame.slots.shape[0] == 3 and tokens.num_tokens == frames * frame.num_tokens
            torch.testing.assert_close(target.reshape(2, frames, -1, target.shape[-1])[:, i], single.target(frame))
            torch.testing.assert_close(loss[:, i], single.loss(shaped[:, i], single.target(frame), frame))
            torch.testing.assert_close(values[:, i], single.values_from_prediction(shaped[:, i], frame))


def test_tube_masking_hides_a_patch_at_every_date_of_any_band_set() -> None:
    seed = seed_now()
    adapter = built(seed, tokens_per_patch="group")
    batch = series(seed, bands=9, frames=5, size=16)
    batch["wavelengths"] = torch.tensor([450.0, 550, 650, 720, 800, 900, 1600, 2200, 11000])  # every group present
    present = torch.rand(2, 5, generator=torch.Generator().manual_seed(seed)) > 0.3
    present[:, 0] = True
    batch["date_present"] = present
    tokens = adapter.tokenize(batch)
    per = (2, 5, 4, 16)  # (B, T, groups, patches)
    for masking, tube in ((TubeMasking(0.75), True), (RandomMasking(0.75), False)):
        torch.manual_seed(seed)
        visible: Visible = masking(tokens)
        shown = (~visible.mask & tokens.present).reshape(per)
        assert not shown[~present].any()  # absent dates show nothing
        mixed = (shown.any(1) & ~(shown | ~present[:, :, None, None]).all(1)).sum((-1, -2))
        if tube:  # a tube is shown at every present date or at none (but the one at the budget's edge)
            assert bool((mixed <= 1).all()), mixed
        else:
            assert bool((mixed > 3).all()), mixed


def test_bad_batches_are_clear_errors() -> None:
    adapter = built(0)
    batch = series(0)
    with pytest.raises(ConfigError, match=r"dates must be \(B, T, 2\)"):
        adapter.tokenize({**batch, "dates": batch["dates"][:, :2]})
    with pytest.raises(ConfigError, match="wavelengths has 5 values but the image has 6 bands"):
        adapter.tokenize({**batch, "wavelengths": batch["wavelengths"][:5]})
    with pytest.raises(ConfigError, match="band 'SWIR' has no known wavelength"):
        adapter.tokenize({"image": batch["image"][:, :, :2], "bands": ["B04", "SWIR"], "dates": batch["dates"]})
    with pytest.raises(ConfigError, match="every date of this batch is absent"):
        adapter.tokenize({**{k: v for k, v in batch.items() if k not in ("mean", "std")},
                          "date_present": torch.zeros(2, 4, dtype=torch.bool)})


def test_lightning_fit_on_time_series_export_and_from_pretrained(tmp_path: Path) -> None:
    """The shipped recipe's adapter trains one step through Lightning on generated NAIP time
    series; the exported encoder gives the trained one's features, and embeds a Sentinel-2-like
    band set given by wavelength on other dates with the same weights."""
    from maekit.domains.multispectral import TimeSeriesDataModule, make_time_series_dataset
    from maekit.pretrain import MAEPretrainModule
    from maekit.weights import from_pretrained
    from maekit.weights.export import export

    root = make_time_series_dataset(tmp_path / "ts", per_class=2, val_per_class=1, seed=1)
    dm = TimeSeriesDataModule(str(root), preset="naip", num_frames=4, task="pretrain", batch_size=2)
    torch.manual_seed(0)
    adapter = TemporalWavelengthAdapter(sensor="naip", patch_size=8, code_width=16, decoder_rank=2)
    module = MAEPretrainModule(adapter, size="nano", decoder_width=16, decoder_depth=1, decoder_heads=2,
                               masking=TubeMasking(0.75), figure_every_n_epochs=0, warmup_epochs=0)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    encoder = from_pretrained(export(ckpt, tmp_path / "exported"))
    assert isinstance(encoder.adapter, TemporalWavelengthAdapter)
    seed = seed_now()
    g = torch.Generator().manual_seed(seed)
    dates = torch.stack([torch.full((2, 3), 2024), torch.randint(1, 366, (2, 3), generator=g)], -1)
    raw = {"image": torch.rand(2, 3, 4, 16, 16, generator=g) * 255, "bands": ["R", "G", "B", "NIR"], "dates": dates,
           "date_present": torch.tensor([[True, False, True], [True, True, True]])}
    trained = module.mae.eval()
    with torch.no_grad():
        tokens = trained.adapter.tokenize(raw)
        want = trained.encoder(trained.adapter.embed(tokens), tokens.present)
        got, _ = encoder(raw)
        torch.testing.assert_close(got, want)
        s2 = {"image": torch.rand(2, 2, 5, 16, 16, generator=g), "wavelengths": [490, 560, 665, 842, 1610],
              "dates": dates[:, :2]}
        feats, s2_tokens = encoder(s2)
    assert feats.shape == (2, 2 * 4, trained.encoder.width if hasattr(trained.encoder, "width") else feats.shape[-1])
    assert torch.isfinite(feats).all() and s2_tokens.grid == (2, 2)


# ------------------------------------------------------------------------------- Prithvi's bands
def test_prithvi_bands_are_the_hls_presets_with_wavelengths_and_old_names_still_load() -> None:
    """A Prithvi-EO-2.0 checkpoint loaded on the temporal path names its bands as the `hls`
    preset does and knows their wavelengths; the HLS L30 numbers B02..B07 that earlier
    conversions wrote are accepted as input names, and a model description written with them
    (no preset) loads to the same model. The aliases are HLS's: Sentinel-2's B05 stays red edge."""
    from maekit.domains.multispectral import load_sensor
    from maekit.weights import converters
    from maekit.weights.hub import build_pretrained

    from .test_temporal import prithvi_state

    state, _, _ = prithvi_state(True)
    config, weights, _ = converters.convert_prithvi(state, temporal=True)
    encoder = build_pretrained(config, weights).eval()
    hls = load_sensor("hls")
    assert encoder.adapter.bands == hls.band_names == ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]
    assert encoder.adapter.wavelengths == hls.wavelengths
    nir = encoder.adapter.sensor_spec().band("NIR_NARROW")
    assert 850 < nir.wavelength_nm < 880 and hls.band("B05") == nir  # OLI band 5
    assert 700 < load_sensor("sentinel2").band("B05").wavelength_nm < 710

    seed = seed_now()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(6, generator=g).tolist()
    x = torch.rand(2, 3, 6, 12, 12, generator=g) * 3000
    dates = torch.stack([torch.randint(2015, 2026, (2, 3), generator=g), torch.randint(1, 366, (2, 3), generator=g)], -1)
    batch = {"image": x[:, :, order], "dates": dates, "latlon": torch.tensor([[45.0, 7.0], [-10.0, 130.0]])}
    old_names = list(hls.aliases)
    with torch.no_grad():
        encoder.adapter.set_input_bands([hls.band_names[i] for i in order])
        want, _ = encoder(batch)
        encoder.adapter.set_input_bands([old_names[i] for i in order])
        got, _ = encoder(batch)
        torch.testing.assert_close(got, want)
        legacy = json.loads(json.dumps(config))
        args = legacy["adapter"]["init_args"]
        args.update(bands=old_names, groups=[old_names])
        del args["preset"], args["rgb"]
        old = build_pretrained(legacy, weights).eval()
        assert old.adapter.bands == hls.band_names and old.adapter.wavelengths == hls.wavelengths
        old.adapter.set_input_bands([old_names[i] for i in order])
        torch.testing.assert_close(old(batch)[0], want)
    # the wavelength machinery looks the same names up: a wavelength model reads Prithvi's bands
    any_sensor = TemporalWavelengthAdapter(sensor="hls", bands=old_names, patch_size=4, code_width=16, decoder_rank=2)
    assert [b.wavelength_nm for b in any_sensor.sensor.select(any_sensor.input_bands)] == hls.wavelengths


def test_a_band_alias_must_name_a_band() -> None:
    from maekit.domains.multispectral.sensors import BandSpec, SensorSpec

    bands = (BandSpec("blue", 480.0, 60.0), BandSpec("red", 660.0, 40.0))
    assert SensorSpec("s", bands, aliases={"b1": "blue"}).band("b1").name == "blue"
    with pytest.raises(ConfigError, match="alias 'b2' -> 'green' must name a band"):
        SensorSpec("s", bands, aliases={"b2": "green"})
    with pytest.raises(ConfigError, match="alias 'red' -> 'blue'"):
        SensorSpec("s", bands, aliases={"red": "blue"})
