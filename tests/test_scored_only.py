"""Decoding only the scored tokens (`MaskedAutoencoder.forward(scored_only=True)`, the training
step's path) gives the loss and gradients of the full pass, and full `pred`/`per_token` on demand."""

from __future__ import annotations

import random

import pytest
import torch

from maekit.backbones import TransformerStack
from maekit.domains import MultispectralAdapter
from maekit.pretrain import MaskedAutoencoder, RandomMasking


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


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
    params = [p for p in model.parameters() if p.requires_grad]
    want = torch.autograd.grad(full.loss, params, allow_unused=True)
    got = torch.autograd.grad(fast.loss, params, allow_unused=True)
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-6)
    for name, a, b in zip([n for n, p in model.named_parameters() if p.requires_grad], got, want):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    # the visible tokens' predictions do reach the full pass's outputs, computed on first read
    torch.testing.assert_close(fast.pred, full.pred, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.per_token, full.per_token, rtol=1e-5, atol=1e-6)


def test_scoring_the_visible_tokens_instead_would_be_caught() -> None:
    """The comparison above can fail: the loss of the visible tokens differs from the masked one."""
    model, batch = _mae(1)
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
