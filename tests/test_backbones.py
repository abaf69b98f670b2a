"""Position embeddings and transformer stacks."""

from __future__ import annotations

import torch

from maekit.backbones import SIZES, LearnedPositionTable, TransformerStack, sincos_embedding


def test_sincos_positions_are_distinct_2d_and_3d() -> None:
    for shape in [(14, 14), (6, 7, 8)]:
        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1)
        coords = grid.reshape(-1, len(shape)).float()
        emb = sincos_embedding(coords, 192)
        assert emb.shape == (coords.shape[0], 192)
        dist = torch.cdist(emb, emb) + torch.eye(coords.shape[0]) * 1e3
        assert dist.min() > 1e-3


def test_sincos_handles_widths_not_divisible_and_continuous_coords() -> None:
    emb = sincos_embedding(torch.tensor([[0.5, 1.25, 3.0]]), 100)
    assert emb.shape == (1, 100)
    assert torch.isfinite(emb).all()
    assert not torch.allclose(sincos_embedding(torch.tensor([[0.5]]), 8), sincos_embedding(torch.tensor([[0.6]]), 8))


def test_learned_table_looks_up_grid_positions() -> None:
    table = LearnedPositionTable((4, 5), 16)
    coords = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 2.0]])
    out = table(coords)
    assert torch.equal(out[1], table.table[19])
    assert torch.equal(out[2], table.table[7])


def test_padding_tokens_do_not_change_valid_outputs() -> None:
    torch.manual_seed(0)
    stack = TransformerStack(32, 2, 2).eval()
    x = torch.randn(2, 6, 32)
    valid = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    out = stack(x, valid)
    x2 = x.clone()
    x2[0, 4:] = 100.0  # change padding content
    out2 = stack(x2, valid)
    assert torch.allclose(out[0, :4], out2[0, :4], atol=1e-5)
    assert torch.allclose(stack(x[:1, :4]), out[0:1, :4], atol=1e-5)
    # a row with no valid token gives finite numbers
    assert torch.isfinite(stack(x, torch.zeros(2, 6, dtype=torch.bool))).all()


def test_named_sizes() -> None:
    stack = TransformerStack.from_size("nano")
    assert stack.width == SIZES["nano"].width and len(stack.blocks) == SIZES["nano"].depth
    _, taken = stack(torch.randn(1, 3, stack.width), collect=(1, 2))
    assert len(taken) == 2
