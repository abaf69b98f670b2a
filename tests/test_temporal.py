"""Time series on the Tokens engine: Prithvi-EO-2.0 (4 frames, -TL encodings) against a reference
written here from its published formula, date parsing and bad input, the time-series readers,
tube masking, and the generated crop-phenology task (a temporal model beats a single date).

The Prithvi reference follows terratorch's `terratorch/models/backbones/prithvi_mae.py`
(terrastackai/terratorch at commit f111497348a9e432b23aac000c1c9c70d08aa510): `PrithviViT`
with Conv3d patches of tubelet 1 on (B, C, T, H, W), the fixed 3D sin-cos table built for the
input's frame count (channels [column 6/16, row 6/16, frame 4/16], zero class slot), plus
`TemporalEncoder` (scale x [sin-cos_{D/2}(year) | sin-cos_{D-D/2}(day of year)], float32, repeated
over each frame's tokens) and `LocationEncoder` (scale x [sin-cos_{D/2}(lat) | sin-cos_{D-D/2}(lon)],
added to every patch token), class token + its zero position, timm `Block`s, `nn.LayerNorm`.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from maekit.domains.multispectral import TemporalMultispectralAdapter, TimeSeriesDataModule
from maekit.domains.multispectral.temporal_samples import make_time_series_dataset, phenology_experiment
from maekit.domains.multispectral.timeseries import parse_date, read_series
from maekit.errors import ConfigError, DataError
from maekit.pretrain import MaskedAutoencoder, RandomMasking, TubeMasking
from maekit.weights import from_pretrained

TOL = 1e-5
WIDTH, DEPTH, HEADS, PATCH, SIDE = 64, 2, 2, 4, 3


# ----------------------------------------------------------------- Prithvi reference (published formula)
def ref_sincos_np(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def ref_table(dim: int, frames: int, side: int) -> Tensor:
    """(1 + T side^2, dim): zero class row, then t-major rows of [col | row | frame]."""
    w = np.tile(ref_sincos_np(dim // 16 * 6, np.arange(side)), (frames * side, 1))
    h = np.tile(np.repeat(ref_sincos_np(dim // 16 * 6, np.arange(side)), side, axis=0), (frames, 1))
    t = np.repeat(ref_sincos_np(dim // 16 * 4, np.arange(frames)), side * side, axis=0)
    return torch.from_numpy(np.concatenate([np.zeros((1, dim)), np.concatenate([w, h, t], 1)])).float()


def ref_sincos_torch(dim: int, pos: Tensor) -> Tensor:
    """The float32 torch variant the date/location encoders use."""
    omega = torch.arange(dim // 2, dtype=torch.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = torch.einsum("m,d->md", pos.reshape(-1).float(), omega)
    return torch.cat([out.sin(), out.cos()], 1)


def ref_pair(dim: int, a: Tensor, b: Tensor) -> Tensor:
    return torch.cat([ref_sincos_torch(dim // 2, a), ref_sincos_torch(dim - dim // 2, b)], -1)


def prithvi_state(tl: bool, frames: int = 4) -> tuple[dict[str, Tensor], nn.ModuleList, nn.LayerNorm]:
    """A Prithvi-EO-2.0 checkpoint (4 frames, `encoder.`/`decoder.` keys), every parameter random."""
    torch.manual_seed(7)
    norm_layer = partial(nn.LayerNorm, eps=1e-5)
    blocks = nn.ModuleList(Block(WIDTH, HEADS, qkv_bias=True, norm_layer=norm_layer) for _ in range(DEPTH))
    norm = norm_layer(WIDTH)
    with torch.no_grad():
        for p in [*blocks.parameters(), *norm.parameters()]:
            p.copy_(torch.randn_like(p) * 0.2)
    state = {"encoder.patch_embed.proj.weight": torch.randn(WIDTH, 6, 1, PATCH, PATCH) * 0.1,
             "encoder.patch_embed.proj.bias": torch.randn(WIDTH) * 0.1,
             "encoder.cls_token": torch.randn(1, 1, WIDTH), "encoder.pos_embed": ref_table(WIDTH, frames, SIDE)[None],
             **{f"encoder.blocks.{k}": v for k, v in blocks.state_dict().items()},
             **{f"encoder.norm.{k}": v for k, v in norm.state_dict().items()},
             "decoder.decoder_embed.weight": torch.randn(32, WIDTH), "decoder.mask_token": torch.randn(1, 1, 32)}
    if tl:
        state["encoder.temporal_embed_enc.scale"] = torch.rand(1) + 0.05
        state["encoder.location_embed_enc.scale"] = torch.rand(1) + 0.05
    return state, blocks, norm


@torch.no_grad()
def prithvi_reference(state: dict[str, Tensor], blocks: nn.ModuleList, norm: nn.LayerNorm, x: Tensor,
                      dates: Tensor | None, latlon: Tensor | None) -> Tensor:
    """terratorch's `PrithviViT.forward_features` (last output) for x (B, C, T, H, W), a model built
    for T frames."""
    b, _, t = x.shape[:3]
    tokens = nn.functional.conv3d(x, state["encoder.patch_embed.proj.weight"], state["encoder.patch_embed.proj.bias"],
                                  stride=(1, PATCH, PATCH)).flatten(2).transpose(1, 2)
    pos = ref_table(WIDTH, t, SIDE)[None]
    tokens = tokens + pos[:, 1:]
    if dates is not None and "encoder.temporal_embed_enc.scale" in state:
        code = ref_pair(WIDTH, dates[:, :, 0].flatten().float(), dates[:, :, 1].flatten().float()).reshape(b, t, -1)
        tokens = tokens + (state["encoder.temporal_embed_enc.scale"] * code).repeat_interleave(SIDE * SIDE, 1)
    if latlon is not None and "encoder.location_embed_enc.scale" in state:
        code = ref_pair(WIDTH, latlon[:, 0], latlon[:, 1]).reshape(b, 1, -1)
        tokens = tokens + state["encoder.location_embed_enc.scale"] * code
    cls = (state["encoder.cls_token"] + pos[:, :1]).expand(b, -1, -1)
    h = torch.cat([cls, tokens], 1)
    for block in blocks:
        h = block(h)
    return norm(h)


def identity_statistics(encoder: nn.Module) -> None:
    encoder.adapter.mean.zero_()
    encoder.adapter.offset.zero_()
    encoder.adapter.std.fill_(1.0)
    encoder.adapter.scale.fill_(1.0)


def random_inputs(frames: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, frames, SIDE * PATCH, SIDE * PATCH, generator=g)
    dates = torch.stack([torch.randint(1990, 2030, (2, frames), generator=g),
                         torch.randint(1, 367, (2, frames), generator=g)], -1)
    latlon = torch.stack([torch.rand(2, generator=g) * 180 - 90, torch.rand(2, generator=g) * 360 - 180], -1)
    return x, dates, latlon


def load_temporal(tmp_path: Path, state: dict[str, Tensor]) -> nn.Module:
    path = tmp_path / "Prithvi_EO_V2_TL.pt"
    torch.save(state, path)
    with pytest.warns(UserWarning, match="temporal: trained on 4 frames"):
        encoder = from_pretrained(path, temporal=True)
    identity_statistics(encoder)
    return encoder


@pytest.mark.parametrize("frames, tl", [(4, True), (3, True), (1, True), (4, False)])
def test_prithvi_temporal_matches_upstream_forward(tmp_path: Path, frames: int, tl: bool) -> None:
    """Features on 4 dates (and on fewer) equal the upstream model's own forward, with its date and
    location encodings (every weight, date, lat/lon and scale random)."""
    state, blocks, norm = prithvi_state(tl)
    encoder = load_temporal(tmp_path, state)
    assert isinstance(encoder.adapter, TemporalMultispectralAdapter)
    assert encoder.adapter.date_encoding is tl and encoder.adapter.location_encoding is tl
    x, dates, latlon = random_inputs(frames, seed=frames)
    with torch.no_grad():
        ours, _ = encoder({"image": x.transpose(1, 2), "dates": dates, "latlon": latlon}, return_prefix=True)
    theirs = prithvi_reference(state, blocks, norm, x, dates, latlon)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < TOL
    if tl:  # the encodings matter: without dates the features differ (upstream skips the term too)
        with torch.no_grad():
            undated, _ = encoder({"image": x.transpose(1, 2), "latlon": latlon}, return_prefix=True)
        assert (undated - prithvi_reference(state, blocks, norm, x, None, latlon)).abs().max() < TOL
        assert (undated - theirs).abs().max() > 1e-2


def test_prithvi_temporal_absent_date_is_left_out(tmp_path: Path) -> None:
    """Four date slots with the last one absent (clouded) give, on the present tokens, what the
    upstream model computes on the first three dates alone."""
    state, blocks, norm = prithvi_state(True)
    encoder = load_temporal(tmp_path, state)
    x, dates, latlon = random_inputs(4, seed=11)
    present = torch.tensor([[True, True, True, False]] * 2)
    with torch.no_grad():
        ours, tokens = encoder({"image": x.transpose(1, 2), "dates": dates, "latlon": latlon,
                                "date_present": present}, return_prefix=True)
    theirs = prithvi_reference(state, blocks, norm, x[:, :, :3], dates[:, :3], latlon)
    n = 3 * SIDE * SIDE
    assert not tokens.present[:, n:].any()
    assert (ours[:, : 1 + n] - theirs).abs().max() < TOL


def test_prithvi_temporal_refuses_a_learned_table(tmp_path: Path) -> None:
    state, _, _ = prithvi_state(True)
    state["encoder.pos_embed"] = torch.randn_like(state["encoder.pos_embed"])
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(Exception, match="temporal=True needs Prithvi's fixed 3D sin-cos"):
        from_pretrained(path, temporal=True, num_frames=4)


# ------------------------------------------------------------------------------ dates and bad input
@pytest.mark.parametrize("text, expected", [
    ("HLS.S30.T14SKB.2021154T172901", (2021, 154)), ("field_2020-03-01", (2020, 61)), ("S2_20191231_x", (2019, 365)),
    ("2021_02_03", (2021, 34)), ("2020:12:31 10:00:00", (2020, 366)),
])
def test_parse_date(text: str, expected: tuple[int, int]) -> None:
    assert parse_date(text, "x") == expected


def test_dates_that_do_not_parse_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"f\.tif.*2021-02-30"):
        parse_date("2021-02-30", tmp_path / "f.tif")
    root = make_time_series_dataset(tmp_path / "d", per_class=1, val_per_class=0, frames=2, seed=0)
    location = next(p for p in (root / "train").rglob("field_*") if p.is_dir())
    first = sorted(location.iterdir())[0]
    first.rename(location / "field_undated.tif")
    with pytest.raises(DataError, match="field_undated.tif.*no date in its name"):
        read_series(location, "folders", ["R", "G", "B", "NIR"], [0, 1, 2, 3], 0, None)


def _tif(path: Path, data: np.ndarray, x0: float = 400000, crs: str = "EPSG:32614") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype="uint8", crs=crs, transform=from_origin(x0, 4300000, 10, 10), nodata=0) as dst:
        dst.write(data)


def test_mismatched_grids_and_sidecars_are_refused(tmp_path: Path) -> None:
    bands, index = ["R", "G", "B", "NIR"], [0, 1, 2, 3]
    chip = np.full((4, 8, 8), 100, np.uint8)
    loc = tmp_path / "loc"
    _tif(loc / "a_2021-05-01.tif", chip)
    _tif(loc / "a_2021-06-01.tif", chip, x0=400010)
    with pytest.raises(DataError, match=r"a_2021-06-01.tif.*transform differs"):
        read_series(loc, "folders", bands, index, None, None)
    _tif(loc / "a_2021-06-01.tif", chip, crs="EPSG:32615")
    with pytest.raises(DataError, match=r"a_2021-06-01.tif.*CRS differs"):
        read_series(loc, "folders", bands, index, None, None)
    _tif(loc / "a_2021-06-01.tif", chip[:, :4, :4])
    with pytest.raises(DataError, match=r"a_2021-06-01.tif.*size differs"):
        read_series(loc, "folders", bands, index, None, None)
    _tif(loc / "a_2021-06-01.tif", chip[:3])
    with pytest.raises(DataError, match=r"a_2021-06-01.tif.*band count differs"):
        read_series(loc, "folders", bands, index, None, None)
    stack = tmp_path / "s.tif"
    _tif(stack, np.concatenate([chip, chip, chip]))
    (tmp_path / "s.json").write_text(json.dumps({"dates": ["2021-05-01", "2021-06-01"]}))
    with pytest.raises(DataError, match=r"s\.json.*lists 2 dates but s.tif holds 3 dates"):
        read_series(stack, "stacks", bands, index, None, None)
    _tif(stack, np.concatenate([chip, chip[:2]]))
    with pytest.raises(DataError, match=r"s\.tif.*has 6 bands, not a whole number of dates of 4"):
        read_series(stack, "stacks", bands, index, None, None)


# ------------------------------------------------------------------------------ readers, datamodule
@pytest.mark.parametrize("layout", ["folders", "stacks"])
def test_time_series_datamodule(tmp_path: Path, layout: str) -> None:
    root = make_time_series_dataset(tmp_path / layout, per_class=2, val_per_class=1, frames=5, layout=layout,
                                    cloud_fraction=0.5, seed=3)
    dm = TimeSeriesDataModule(str(root), layout=layout, num_frames=6, task="classification", batch_size=6,
                              location=True)
    dm.setup()
    assert dm.classes == ["early", "late", "mid"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (6, 6, 4, 16, 16) and batch["dates"].shape == (6, 6, 2)
    assert not batch["date_present"][:, 5].any()  # 5 dates padded to 6
    assert (~batch["date_present"][:, :5]).any()  # cloud gaps at cloud_fraction 0.5
    assert ((batch["dates"][:, :5, 1] >= 90) & (batch["dates"][:, :5, 1] <= 290)).all()
    lat, lon = batch["latlon"][:, 0], batch["latlon"][:, 1]  # UTM 14N, x 400-550 km: west of -99
    assert ((lat > 38) & (lat < 39.5) & (lon > -101) & (lon < -99)).all()
    adapter = TemporalMultispectralAdapter(preset="naip", patch_size=8, location_encoding=True)
    model = MaskedAutoencoder(adapter, "nano", masking=TubeMasking(0.75))
    out = model(batch)
    assert torch.isfinite(out.loss)
    assert not out.tokens.present.reshape(6, 6, -1)[~batch["date_present"]].any()  # absent dates: absent tokens
    out.loss.backward()
    assert adapter.time_scale.grad is not None and adapter.location_scale.grad is not None
    assert adapter.untokenize(out.tokens.values, out.tokens).shape == (6, 6, 4, 16, 16)


def test_tube_masking_hides_a_patch_at_every_date() -> None:
    adapter = TemporalMultispectralAdapter(preset="naip", patch_size=4)
    adapter.build(64)
    batch = {"image": torch.randint(1, 255, (3, 5, 4, 32, 32)), "dates": torch.randint(1, 300, (3, 5, 2))}
    tokens = adapter.tokenize(batch)
    per = (3, 5, 2, 64)  # (B, T, groups, patches)
    for masking, tube in ((TubeMasking(0.75), True), (RandomMasking(0.75), False)):
        torch.manual_seed(0)
        visible = masking(tokens).mask.reshape(per)
        assert int(visible.sum()) == 3 * 32 * 4 // 4 * 5  # the budget is exact
        mixed = (visible.any(1) & ~visible.all(1)).sum(-1).sum(-1)  # tubes shown at only some dates
        assert bool((mixed <= 1).all()) if tube else bool((mixed > 10).all())


def test_temporal_adapter_refuses_bad_batches() -> None:
    adapter = TemporalMultispectralAdapter(preset="naip", patch_size=8)
    adapter.build(64)
    with pytest.raises(ConfigError, match=r"dates must be \(B, T, 2\)"):
        adapter.tokenize({"image": torch.zeros(2, 3, 4, 16, 16), "dates": torch.zeros(2, 2, 2)})


# ------------------------------------------------------------------------- evidence: time is needed
def test_temporal_beats_single_date_on_phenology(tmp_path: Path) -> None:
    """Crop types differ only in green-up timing: the temporal model beats one date, and with
    shuffled training labels it is at chance (so the harness can fail)."""
    torch.set_num_threads(1)
    root = make_time_series_dataset(tmp_path / "ph", per_class=20, val_per_class=16, layout="stacks", seed=0)
    temporal = phenology_experiment(root, "temporal", epochs=30, layout="stacks")
    single = phenology_experiment(root, "single", epochs=30, layout="stacks")
    shuffled = phenology_experiment(root, "temporal", epochs=30, layout="stacks", shuffle_labels=True)
    assert temporal["val_acc"] >= single["val_acc"] + 0.1, (temporal, single)
    assert temporal["val_acc"] >= 0.5, temporal
    assert shuffled["val_acc"] <= 0.5, shuffled


def test_small_temporal_config_trains_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maekit.cli import main

    root = make_time_series_dataset(tmp_path / "ts", per_class=4, val_per_class=1, seed=0)
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "multispectral" / "pretrain_temporal_small.yaml"
    code = main(["fit", "-c", str(config), "--data.root", str(root), "--trainer.max_epochs", "1",
                 "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"])
    assert code in (0, None)
    assert list((tmp_path / "runs" / "temporal_pretrain_small").rglob("last.ckpt"))


@pytest.mark.parametrize("groups", ["one", "two"])
def test_encoder_sees_the_temporal_embedding_of_the_visible_tokens(groups: str) -> None:
    """What the MAE encoder is fed (`embed_visible`) is the adapter's own `embed` (frame, scaled
    date and location codes included) at the visible tokens, with one band group or several."""
    seed = int(torch.randint(0, 2**31, ()))
    g = torch.Generator().manual_seed(seed)
    bands = ["R", "G", "B", "N"]
    adapter = TemporalMultispectralAdapter(bands=bands, groups=[bands] if groups == "one" else [bands[:3], bands[3:]],
                                           patch_size=4, location_encoding=True)
    adapter.build(32)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(generator=g)
    batch = {"image": torch.rand(2, 3, 4, 16, 16, generator=g), "dates": torch.randint(1, 300, (2, 3, 2), generator=g),
             "latlon": torch.stack([38 + torch.rand(2, generator=g), -100 + torch.rand(2, generator=g)], -1)}
    tokens = adapter.tokenize(batch)
    visible = RandomMasking(0.75)(tokens)
    got, _ = adapter.embed_visible(tokens, visible.index)
    want = torch.gather(adapter.embed(tokens), 1, visible.index[..., None].expand(-1, -1, 32))
    torch.testing.assert_close(got, want)
