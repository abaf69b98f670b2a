"""The MAE step's fast paths compute what the plain ones do."""

from __future__ import annotations

import random

import pytest
import torch

from maekit.domains import MultispectralAdapter, VolumeAdapter
from maekit.domains.patches import PatchGridAdapter
from maekit.pretrain import GroupDirichletMasking, RandomMasking
from maekit.tokens import DomainAdapter, Tokens


def _assert_same_adapter_gradients(adapter: torch.nn.Module, fast: torch.Tensor, slow: torch.Tensor) -> None:
    """A random weighting of `fast` and of `slow` sends the same gradient to every parameter."""
    weights = torch.randn_like(fast)
    grads = []
    for out in (fast, slow):
        adapter.zero_grad(set_to_none=True)
        (out * weights).sum().backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-4)


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
    _assert_same_adapter_gradients(adapter, fast, slow)  # the same gradients reach every parameter
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


def test_embedding_visible_modalities_of_cases_that_lack_some_equals_embedding_all() -> None:
    """Several modalities, cases lacking random ones, padded visible sets (Dirichlet budget)."""
    rng = random.Random()
    modalities = [f"m{i}" for i in range(rng.randint(2, 4))]
    patch = rng.choice([2, 4])
    adapter = VolumeAdapter(modalities, patch_size=patch, position=rng.choice(["sincos", "learned"]), max_grid=8)
    adapter.build(rng.choice([16, 24]))
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
    cases = rng.randint(2, 4)
    present = torch.rand(cases, len(modalities)) < 0.6
    present[:, rng.randrange(len(modalities))] = True
    present[1, rng.randrange(len(modalities))] = False
    image = torch.randn(cases, len(modalities), *(patch * rng.randint(2, 3) for _ in range(3)))
    tokens = adapter.tokenize({"image": image, "modality_present": present})
    visible = GroupDirichletMasking(rng.uniform(0.3, 0.9), len(modalities))(tokens)
    fast, _ = adapter.embed_visible(tokens, visible.index)
    slow, _ = DomainAdapter.embed_visible(adapter, tokens, visible.index)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    _assert_same_adapter_gradients(adapter, fast, slow)


def test_tokens_gather_takes_each_samples_own_rows_in_order() -> None:
    rng = random.Random()
    b, n, k, p = rng.randint(2, 4), rng.randint(5, 12), 0, rng.randint(1, 6)
    k = rng.randint(1, n)
    tokens = Tokens(values=torch.randn(b, n, p), coords=torch.randn(1, n, 2).expand(b, -1, -1),
                    group=torch.randint(3, (b, n)), present=torch.rand(b, n) < 0.5, saliency=torch.rand(b, n))
    index = torch.stack([torch.randperm(n)[:k] for _ in range(b)])
    got = tokens.gather(index)
    for name in ("values", "coords", "group", "present", "saliency"):
        full = getattr(tokens, name)
        want = torch.stack([full[i, index[i]] for i in range(b)])
        assert torch.equal(getattr(got, name), want), name


@pytest.mark.parametrize("seed", range(6))
def test_head_loss_in_blocks_equals_head_then_target_then_loss(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU path of the scored-only step (prediction head, norm-pix target, per-token loss and
    its weighted sum in blocks of rows, gradients made in forward) gives the value and gradients
    of the head followed by `target`, `loss` and the weighted sum; rows of weight 0 never enter."""
    from maekit.domains import patches

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    modalities = [f"m{i}" for i in range(rng.randint(1, 3))]
    adapter = VolumeAdapter(modalities, patch_size=rng.choice([2, 4]), norm_pix_loss=seed % 2 == 0,
                            loss="l1" if seed % 3 == 0 else "mse")
    side = adapter.patch_size * rng.randint(2, 3)
    tokens = adapter.tokenize({"image": torch.randn(rng.randint(1, 3), len(modalities), side, side, side, generator=g)})
    width = rng.choice([8, 16])
    head = torch.nn.Linear(width, adapter.token_size)
    with torch.no_grad():
        head.weight.normal_(generator=g)
        head.bias.normal_(generator=g)
    m = rng.randint(2, tokens.num_tokens)
    index = torch.stack([torch.randperm(tokens.num_tokens, generator=g)[:m] for _ in range(tokens.batch_size)])
    features = torch.randn(tokens.batch_size, m, width, generator=g, requires_grad=True)
    weight = torch.rand(index.shape, generator=g) * (torch.rand(index.shape, generator=g) < 0.7)
    # blocks of a few rows, so a batch takes several (the default block is 2 MiB of values)
    monkeypatch.setattr(patches._HeadLoss, "BLOCK", adapter.token_size * rng.randint(1, 5))
    picked = tokens.gather(index)
    want = (adapter.loss(head(features), adapter.target(picked), picked) * weight).sum()
    got = adapter.head_loss(features, head, tokens, index, weight)
    assert got is not None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    inputs = [features, head.weight, head.bias]
    scale = rng.uniform(0.5, 2.0)  # backward scales by the incoming gradient
    for a, b, name in zip(torch.autograd.grad(got * scale, inputs), torch.autograd.grad(want * scale, inputs),
                          ["features", "weight", "bias"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():  # evaluation: the value alone
        torch.testing.assert_close(adapter.head_loss(features, head, tokens, index, weight), want.detach(),
                                   rtol=1e-5, atol=1e-5)
    # padding (weight 0) holding NaN features does not leak in
    with torch.no_grad():
        poisoned = features.detach().clone()
        poisoned[weight == 0] = float("nan")
    assert torch.isfinite(adapter.head_loss(poisoned, head, tokens, index, weight))
