"""Decoding only the scored tokens (`MaskedAutoencoder.forward(scored_only=True)`, the training
step's path) gives the loss and gradients of the full pass, and full `pred`/`per_token` on demand."""

from __future__ import annotations

import random

import pytest
import torch

from maekit.backbones import TransformerStack
from maekit.domains import MultispectralAdapter, VolumeAdapter
from maekit.pretrain import GroupDirichletMasking, MaskedAutoencoder, RandomMasking
from maekit.tokens import Tokens


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


def _assert_same_loss_and_gradients(model: MaskedAutoencoder, fast: torch.Tensor, full: torch.Tensor) -> None:
    """`fast` and `full` (two losses of `model`) agree in value and in every parameter's gradient."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    want = torch.autograd.grad(full, params, allow_unused=True)
    got = torch.autograd.grad(fast, params, allow_unused=True)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    for (name, _), a, b in zip(named, got, want):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("seed", range(4))
def test_query_index_matches_full_stack_then_gather(seed: int) -> None:
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    heads = rng.choice([1, 2, 4])
    width = heads * rng.choice([8, 16])
    stack = TransformerStack(width, rng.randint(1, 3), heads, class_token=rng.random() < 0.5)
    _randomise(stack, g)
    b, n, m = rng.randint(1, 3), rng.randint(5, 20), 0
    m = rng.randint(1, n)
    x = torch.randn(b, n, width, generator=g)
    pos = torch.randn(b, n, width, generator=g) if rng.random() < 0.5 else None
    valid = torch.rand(b, n, generator=g) < 0.7 if rng.random() < 0.5 else None
    index = torch.stack([torch.randperm(n, generator=g)[:m] for _ in range(b)])
    want = torch.gather(stack(x, valid, pos=pos), 1, index[..., None].expand(-1, -1, width))
    got = stack(x, valid, pos=pos, query_index=index)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _mae(seed: int) -> tuple[MaskedAutoencoder, dict[str, torch.Tensor]]:
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    bands = [f"b{i}" for i in range(rng.randint(1, 4))]
    patch = rng.choice([4, 8])
    adapter = MultispectralAdapter(bands=bands, groups=[bands], patch_size=patch,
                                   norm_pix_loss=rng.random() < 0.5, loss=rng.choice(["mse", "l1"]))
    model = MaskedAutoencoder(adapter, "nano", decoder_width=rng.choice([16, 32]), decoder_depth=rng.randint(1, 3),
                              decoder_heads=rng.choice([1, 2]), masking=RandomMasking(rng.uniform(0.3, 0.9)))
    _randomise(model, g)
    side = patch * rng.randint(2, 5)
    return model, {"image": torch.randn(rng.randint(1, 3), len(bands), side, side, generator=g)}


@pytest.mark.parametrize("seed", range(6))
def test_scored_only_loss_gradients_and_lazy_outputs_match_the_full_pass(seed: int) -> None:
    model, batch = _mae(seed)
    visible = model.masking(model.adapter.tokenize(batch))
    full = model(batch, visible=visible)
    fast = model(batch, visible=visible, scored_only=True)
    _assert_same_loss_and_gradients(model, fast.loss, full.loss)
    # the visible tokens' predictions do reach the full pass's outputs, computed on first read
    torch.testing.assert_close(fast.pred, full.pred, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.per_token, full.per_token, rtol=1e-5, atol=1e-6)


def test_scoring_the_visible_tokens_instead_would_be_caught() -> None:
    """The comparison above can fail: the loss of the visible tokens differs from the masked one."""
    model, batch = _mae(1)
    torch.manual_seed(0)  # a mask whose visible and masked losses differ (about 1 in 20 give the same)
    visible = model.masking(model.adapter.tokenize(batch))
    full = model(batch, visible=visible)
    on_visible = full.per_token[visible.mask].mean()
    assert not torch.isclose(on_visible, full.loss, rtol=1e-3)
    assert torch.isclose(model(batch, visible=visible, scored_only=True).loss, full.loss, rtol=1e-5)


def test_hierarchical_decoder_falls_back_to_the_full_pass() -> None:
    torch.manual_seed(3)
    adapter = MultispectralAdapter(bands=["a", "b"], groups=[["a", "b"]], patch_size=4)
    model = MaskedAutoencoder(adapter, "nano", decoder_width=16, decoder_depth=2, decoder_heads=2, decoder_reads=[1, 2])
    batch = {"image": torch.randn(2, 2, 16, 16)}
    visible = model.masking(model.adapter.tokenize(batch))
    fast, full = model(batch, visible=visible, scored_only=True), model(batch, visible=visible)
    torch.testing.assert_close(fast.loss, full.loss)
    torch.testing.assert_close(fast.pred, full.pred)


def _ragged_mae(seed: int) -> tuple[MaskedAutoencoder, dict[str, torch.Tensor]]:
    """A multimodal volume MAE whose cases lack random modalities, so visible counts differ
    between samples (padded visible sets) and some tokens are absent."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    modalities = [f"m{i}" for i in range(rng.randint(2, 4))]
    patch = rng.choice([2, 4])
    adapter = VolumeAdapter(modalities, patch_size=patch, norm_pix_loss=rng.random() < 0.5,
                            loss=rng.choice(["mse", "l1"]))
    model = MaskedAutoencoder(adapter, "nano", decoder_width=rng.choice([16, 32]), decoder_depth=rng.randint(1, 3),
                              decoder_heads=rng.choice([1, 2]),
                              masking=GroupDirichletMasking(rng.uniform(0.4, 0.9), len(modalities)))
    _randomise(model, g)
    cases = rng.randint(2, 3)
    present = torch.rand(cases, len(modalities), generator=g) < 0.6
    present[torch.arange(cases), torch.randint(len(modalities), (cases,), generator=g)] = True
    present[0] = True  # one complete case, the others lack some: the counts differ
    present[1, rng.randrange(len(modalities))] = False
    side = [patch * rng.randint(2, 3) for _ in range(3)]
    return model, {"image": torch.randn(cases, len(modalities), *side, generator=g), "modality_present": present}


@pytest.mark.parametrize("seed", range(6))
def test_scored_only_with_padded_visible_sets_matches_the_full_pass(seed: int) -> None:
    model, batch = _ragged_mae(seed)
    visible = model.masking(model.adapter.tokenize(batch))
    assert visible.valid is not None and not bool(visible.valid.all())  # the padded case is exercised
    full = model(batch, visible=visible)
    fast = model(batch, visible=visible, scored_only=True)
    _assert_same_loss_and_gradients(model, fast.loss, full.loss)
    torch.testing.assert_close(fast.pred, full.pred, rtol=1e-5, atol=1e-6)


def test_scored_only_decodes_the_scored_tokens_alone() -> None:
    """The padded path decodes each sample's scored tokens (padded to the largest count), not
    every hidden or absent one; and padding slots never enter the loss."""
    model, batch = _ragged_mae(2)
    tokens = model.adapter.tokenize(batch)
    visible = model.masking(tokens)
    hidden = model._decoded_alone(tokens, visible)
    assert hidden is not None
    scored = tokens.present & ~visible.mask
    # fewer than the hidden positions of the sample with most: its absent tokens are not decoded
    assert hidden.shape[1] == int(scored.sum(1).max()) < int((~visible.mask).sum(1).max())
    picked = torch.gather(scored, 1, hidden)
    assert torch.equal(picked.sum(1), scored.sum(1))  # every scored token is decoded, once


def test_per_token_loss_is_claimed_only_where_targets_and_losses_are_the_grids_own() -> None:
    class PerFrame(VolumeAdapter):
        def loss(self, pred: torch.Tensor, target: torch.Tensor, tokens: Tokens) -> torch.Tensor:
            return super().loss(pred, target, tokens).cumsum(1)  # reads other tokens

    assert VolumeAdapter(["a", "b"], patch_size=2).per_token_loss
    assert MultispectralAdapter(bands=["a"], groups=[["a"]], patch_size=2).per_token_loss
    assert not PerFrame(["a", "b"], patch_size=2).per_token_loss


@pytest.mark.parametrize("seed", range(3))
def test_scored_only_for_an_adapter_that_scores_the_full_layout_matches_the_full_pass(seed: int) -> None:
    """An adapter without `per_token_loss` whose head is narrower than its targets (the
    wavelength-conditioned one), with nodata pixels so the visible sets are padded."""
    from maekit.domains.multispectral import WavelengthAdapter

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    adapter = WavelengthAdapter(sensor="sentinel2", patch_size=4, code_width=16, decoder_rank=rng.randint(2, 4),
                                bandwidth_dropout=0.0)
    assert not adapter.per_token_loss
    model = MaskedAutoencoder(adapter, "nano", decoder_width=16, decoder_depth=rng.randint(1, 2), decoder_heads=2,
                              masking=RandomMasking(rng.uniform(0.4, 0.8)))
    _randomise(model, g)
    bands, side = rng.randint(3, 6), 4 * rng.randint(3, 4)
    valid = torch.ones(2, side, side, dtype=torch.bool)
    valid[0, : 4 * rng.randint(1, 2)] = False  # nodata rows: absent tokens in the first sample only
    batch = {"image": torch.rand(2, bands, side, side, generator=g), "valid": valid,
             "wavelengths": 400 + 2000 * torch.rand(bands, generator=g),
             "bandwidths": 10 + 100 * torch.rand(bands, generator=g)}
    visible = model.masking(model.adapter.tokenize(batch))
    assert visible.valid is not None
    full = model(batch, visible=visible)
    fast = model(batch, visible=visible, scored_only=True)
    _assert_same_loss_and_gradients(model, fast.loss, full.loss)
