"""The multispectral adapter and the MAE on top of it: round trips, loss placement, band subsets."""

from __future__ import annotations

import pytest
import torch

from maekit.domains import MultispectralAdapter
from maekit.errors import ConfigError
from maekit.pretrain import MaskedAutoencoder, RandomMasking


def naip_batch(batch: int = 3, size: int = 32, seed: int = 0, channels: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(1, 256, (batch, channels, size, size), generator=g, dtype=torch.uint8)
    valid = torch.ones(batch, size, size, dtype=torch.bool)
    valid[0, :9, :9] = False  # a nodata corner
    return {"image": image, "valid": valid}


def test_tokenize_untokenize_round_trip() -> None:
    adapter = MultispectralAdapter(preset="naip", patch_size=8)
    batch = naip_batch()
    tokens = adapter.tokenize(batch)
    assert tokens.values.shape == (3, 2 * 16, 3 * 64)  # groups [R,G,B] and [NIR], 4x4 patches
    assert tokens.grid == (4, 4)
    back = adapter.untokenize(tokens.values, tokens)
    valid = batch["valid"][:, None].expand_as(back)
    assert torch.allclose(back[valid], adapter.normalize(batch["image"])[valid], atol=1e-6)
    assert (back[~valid] == 0).all()  # nodata values never reach the model
    # nodata corner: patches (0,0), (0,1), (1,0), (1,1) touch it, in both groups
    absent = ~tokens.present[0].reshape(2, 4, 4)
    assert absent[:, :2, :2].all() and absent.sum() == 8
    assert tokens.present[1:].all()


def test_normalisation_uses_scale_offset_and_statistics() -> None:
    adapter = MultispectralAdapter(bands=["a", "b"], mean=[1.0, 2.0], std=[2.0, 4.0], scale=[0.5, 1.0],
                                   offset=[0.0, 2.0], patch_size=2)
    image = torch.tensor([[[[4.0]], [[8.0]]]]).expand(1, 2, 2, 2)
    out = adapter.normalize(image)
    assert torch.allclose(out[0, 0], torch.full((2, 2), (4 * 0.5 - 1) / 2))
    assert torch.allclose(out[0, 1], torch.full((2, 2), (8 + 2 - 2) / 4))


def test_band_subset_uses_only_groups_with_data() -> None:
    adapter = MultispectralAdapter(preset="naip", patch_size=8, input_bands=["R", "G", "B"])
    tokens = adapter.tokenize(naip_batch(channels=3))
    assert tokens.values.shape[1] == 16 and (tokens.group == 0).all()
    adapter.set_input_bands(["NIR"])
    tokens = adapter.tokenize(naip_batch(channels=1))
    assert (tokens.group == 1).all()
    with pytest.warns(UserWarning, match="partly"):
        adapter.set_input_bands(["R", "NIR"])


def test_adapter_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="unknown band 'SWIR'"):
        MultispectralAdapter(preset="naip", input_bands=["R", "SWIR"])
    with pytest.raises(ConfigError, match="mean has 3 values but there are 4 bands"):
        MultispectralAdapter(preset="naip", mean=[0.0, 0.0, 0.0])
    with pytest.raises(ConfigError, match="cover every band"):
        MultispectralAdapter(bands=["a", "b"], groups=[["a"]])
    adapter = MultispectralAdapter(preset="naip", patch_size=8)
    with pytest.raises(ConfigError, match="3 bands but the adapter expects 4"):
        adapter.tokenize(naip_batch(channels=3))
    with pytest.raises(ConfigError, match="not a multiple of the patch size"):
        adapter.tokenize({"image": torch.zeros(1, 4, 30, 30)})


def small_mae(**kwargs: object) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(MultispectralAdapter(preset="naip", patch_size=8), size="nano",
                             decoder_width=32, decoder_depth=1, decoder_heads=2, **kwargs)  # type: ignore[arg-type]


def test_loss_is_taken_on_masked_present_tokens_only() -> None:
    mae = small_mae().eval()
    batch = naip_batch()
    torch.manual_seed(5)
    out = mae(batch)
    scored = out.scored.float()
    assert torch.allclose(out.loss, (out.per_token * scored).sum() / scored.sum())
    assert not (out.scored & ~out.tokens.present).any()
    assert not (out.scored & out.visible.mask).any()
    # changing pixels under nodata (absent tokens) changes nothing: never seen, never scored
    changed = {k: v.clone() for k, v in batch.items()}
    changed["image"][0, :, :8, :8] = 7
    torch.manual_seed(5)
    assert torch.allclose(mae(changed).loss, out.loss)
    # changing pixels of a visible token changes the loss
    first_visible = int(out.visible.index[1, 0])
    row, col = (first_visible % 16) // 4, (first_visible % 16) % 4
    changed = {k: v.clone() for k, v in batch.items()}
    changed["image"][1, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = 255 - changed["image"][1, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8]
    torch.manual_seed(5)
    assert not torch.allclose(mae(changed).loss, out.loss)


def test_loss_stays_finite_without_masked_or_present_tokens() -> None:
    mae = small_mae(masking=RandomMasking(0.0))
    out = mae(naip_batch())
    assert out.loss.item() == 0.0 and not out.scored.any()
    mae = small_mae()
    batch = naip_batch()
    batch["valid"][:] = False
    out = mae(batch)
    assert torch.isfinite(out.loss) and out.loss.item() == 0.0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in mae.parameters() if p.grad is not None)


def test_norm_pix_prediction_round_trip() -> None:
    adapter = MultispectralAdapter(preset="naip", patch_size=8)
    tokens = adapter.tokenize(naip_batch())
    back = adapter.values_from_prediction(adapter.target(tokens), tokens)
    assert torch.allclose(back, tokens.values, atol=1e-3)


def test_l1_loss_option() -> None:
    adapter = MultispectralAdapter(preset="toa", patch_size=4, loss="l1", norm_pix_loss=False)
    tokens = adapter.tokenize({"image": torch.rand(1, 14, 8, 8) * 100})
    target = adapter.target(tokens)
    per_token = adapter.loss(target + 0.5, target, tokens)
    assert torch.allclose(per_token, torch.full_like(per_token, 0.5))


@pytest.mark.parametrize("with_nodata", [False, True])
def test_training_step_traces_as_one_graph(with_nodata: bool) -> None:
    """fullgraph tracing fails on any host sync (.item(), data-dependent shapes, boolean
    indexing), so this pins the no-sync rule of the performance guide."""
    import torch._dynamo

    torch._dynamo.reset()
    mae = small_mae()
    batch = naip_batch()
    if not with_nodata:
        del batch["valid"]

    def step(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return mae(b).loss

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    loss = compiled(batch)
    assert torch.isfinite(loss)
    loss.backward()


def test_nan_nodata_keeps_loss_and_logits_finite() -> None:
    from maekit.finetune import ClassificationTask

    adapter = MultispectralAdapter(bands=["a", "b"], patch_size=8)
    image = torch.rand(2, 2, 16, 16)
    image[0, :, :8, :8] = float("nan")
    batch = {"image": image, "valid": ~torch.isnan(image).any(1)}
    torch.manual_seed(0)
    mae = MaskedAutoencoder(adapter, size="nano", decoder_width=32, decoder_depth=1, decoder_heads=2)
    out = mae(batch)
    assert torch.isfinite(out.loss) and torch.isfinite(out.pred).all()
    task = ClassificationTask(MultispectralAdapter(bands=["a", "b"], patch_size=8), num_classes=3, size="nano")
    assert torch.isfinite(task(batch)).all()


def test_learned_positions_refuse_grids_larger_than_the_table() -> None:
    adapter = MultispectralAdapter(preset="naip", patch_size=8, position="learned", max_grid=4)
    adapter.tokenize(naip_batch(size=32))  # 4x4 fits
    with pytest.raises(ConfigError, match="does not fit the learned position table"):
        adapter.tokenize(naip_batch(size=40))
