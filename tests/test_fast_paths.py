"""The MAE step's fast paths compute what the plain ones do."""

from __future__ import annotations

import random

import pytest
import torch

from maekit.domains import MultispectralAdapter
from maekit.domains.patches import PatchGridAdapter
from maekit.pretrain import RandomMasking
from maekit.tokens import DomainAdapter


@pytest.mark.parametrize("position", ["sincos", "learned"])
@pytest.mark.parametrize("layout", ["one group", "two groups", "only the second of two groups"])
def test_embedding_only_the_visible_tokens_equals_embedding_all_then_gathering(position: str, layout: str) -> None:
    rng = random.Random()
    bands = [f"b{i}" for i in range(rng.randint(2, 5))]
    groups = [bands] if layout == "one group" else [bands[:-1], bands[-1:]]
    given = bands[-1:] if layout.startswith("only") else bands
    patch = rng.choice([2, 4])
    adapter = MultispectralAdapter(bands=bands, groups=groups, patch_size=patch, position=position, max_grid=16,
                                   input_bands=given)
    adapter.build(rng.choice([16, 24, 32]))
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
    batch = {"image": torch.randn(rng.randint(1, 3), len(given), patch * rng.randint(2, 6), patch * rng.randint(2, 6))}
    tokens = adapter.tokenize(batch)
    visible = RandomMasking(rng.uniform(0.3, 0.9))(tokens)
    fast, fast_pos = adapter.embed_visible(tokens, visible.index)
    slow, slow_pos = DomainAdapter.embed_visible(adapter, tokens, visible.index)
    assert fast_pos is None and slow_pos is None
    assert fast.shape == slow.shape == (*visible.index.shape, adapter.embed_dim)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    # the same gradients reach every parameter
    weights = torch.randn_like(fast)
    grads = []
    for out in (adapter.embed_visible(tokens, visible.index)[0], DomainAdapter.embed_visible(adapter, tokens, visible.index)[0]):
        adapter.zero_grad(set_to_none=True)
        (out * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-4)
    assert isinstance(adapter, PatchGridAdapter)


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_per_token_loss_is_the_mean_error_of_each_token(kind: str) -> None:
    rng = random.Random()
    bands = [f"b{i}" for i in range(rng.randint(1, 4))]
    adapter = MultispectralAdapter(bands=bands, groups=[bands], patch_size=2, loss=kind)  # type: ignore[arg-type]
    tokens = adapter.tokenize({"image": torch.randn(2, len(bands), 4, 6)})
    pred = torch.randn(tokens.values.shape, requires_grad=True)
    target = torch.randn(tokens.values.shape)
    per_token = adapter.loss(pred, target, tokens)
    error = (pred - target).abs() if kind == "l1" else (pred - target) ** 2
    torch.testing.assert_close(per_token, error.mean(-1), rtol=0, atol=0)
    weights = torch.randn(per_token.shape)
    (g,) = torch.autograd.grad((per_token * weights).sum(), pred)
    (ref,) = torch.autograd.grad((error.mean(-1) * weights).sum(), pred)
    torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-7)
