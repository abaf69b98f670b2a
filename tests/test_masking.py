"""Invariants of the mask generators: absent tokens are never visible, ratios are honoured."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from maekit.pretrain import BlockMasking, GroupDirichletMasking, MaskGenerator, RandomMasking
from maekit.tokens import Tokens


def grid_tokens(batch: int = 4, rows: int = 8, cols: int = 8, groups: int = 2, absent_p: float = 0.0,
                seed: int = 0) -> Tokens:
    g = torch.Generator().manual_seed(seed)
    n = rows * cols * groups
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    coords = torch.stack([r.flatten(), c.flatten()], -1).float().repeat(groups, 1)
    present = torch.rand(batch, n, generator=g) >= absent_p
    return Tokens(values=torch.randn(batch, n, 5, generator=g), coords=coords.expand(batch, -1, -1),
                  group=torch.arange(groups).repeat_interleave(rows * cols).expand(batch, -1),
                  present=present, grid=(rows, cols), may_be_absent=absent_p > 0)


MASKERS = [RandomMasking(0.75), BlockMasking(0.6, cell_size=2), GroupDirichletMasking(0.75, num_groups=2)]


@pytest.mark.parametrize("masker", MASKERS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("absent_p", [0.0, 0.3, 0.9])
def test_absent_tokens_are_never_visible(masker: MaskGenerator, absent_p: float) -> None:
    torch.manual_seed(0)
    tokens = grid_tokens(absent_p=absent_p)
    vis = masker(tokens)
    assert not (vis.mask & ~tokens.present).any()
    # every valid slot holds a visible token, and every visible token has a valid slot
    slot_visible = torch.gather(vis.mask, 1, vis.index)
    valid = vis.valid if vis.valid is not None else torch.ones_like(slot_visible)
    assert torch.equal(slot_visible, valid)
    assert torch.equal(valid.sum(1), vis.mask.sum(1))


@pytest.mark.parametrize("masker", MASKERS[:2], ids=lambda m: type(m).__name__)
def test_mask_ratio_is_honoured_per_sample(masker: MaskGenerator) -> None:
    torch.manual_seed(1)
    tokens = grid_tokens(absent_p=0.4)
    vis = masker(tokens)
    expected = [max(1, math.floor((1 - masker.mask_ratio) * int(c))) for c in tokens.present.sum(1)]
    assert vis.mask.sum(1).tolist() == expected
    assert vis.index.shape[1] == math.floor((1 - masker.mask_ratio) * tokens.num_tokens)


def test_all_present_batches_need_no_padding() -> None:
    tokens = grid_tokens(absent_p=0.0)
    vis = RandomMasking(0.75)(tokens)
    assert vis.valid is None
    assert vis.index.shape == (4, 32)
    assert (vis.mask.sum(1) == 32).all()
    assert all(len(set(row.tolist())) == 32 for row in vis.index)  # distinct tokens


def test_masks_differ_between_samples_and_follow_the_seed() -> None:
    tokens = grid_tokens()
    torch.manual_seed(3)
    a = RandomMasking(0.75)(tokens).mask
    torch.manual_seed(3)
    b = RandomMasking(0.75)(tokens).mask
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def test_block_masking_hides_whole_cells() -> None:
    torch.manual_seed(0)
    tokens = grid_tokens(batch=8, rows=16, cols=16, groups=1)
    vis = BlockMasking(0.5, cell_size=4)(tokens)
    cells = (tokens.coords[0] // 4).long()
    cell_id = cells[:, 0] * 4 + cells[:, 1]
    for sample in vis.mask:
        per_cell = torch.zeros(16).index_add_(0, cell_id, sample.float())
        partial = ((per_cell > 0) & (per_cell < 16)).sum()
        assert partial <= 2  # at most the cell(s) where the budget runs out
    # random masking, by contrast, splits most cells
    vis = RandomMasking(0.5)(tokens)
    per_cell = torch.zeros(16).index_add_(0, cell_id, vis.mask[0].float())
    assert ((per_cell > 0) & (per_cell < 16)).sum() > 8


def test_dirichlet_split_gives_no_share_to_missing_groups() -> None:
    torch.manual_seed(0)
    tokens = grid_tokens(batch=16, groups=4)
    tokens.present[:, 64:128] = False  # group 1 missing everywhere
    tokens.present[:4, 128:] = False  # groups 2 and 3 missing in four samples
    masker = GroupDirichletMasking(0.75, num_groups=4)
    vis = masker(tokens)
    assert not vis.mask[:, 64:128].any()
    budget = masker.visible_budget(tokens.present)
    assert (vis.mask.sum(1) <= budget).all()
    assert (vis.mask.sum(1) >= budget - 4).all()  # floors lose at most one token per group
    per_group = vis.mask.reshape(16, 4, 64).sum(2).float()
    assert per_group[4:, [0, 2, 3]].std(0).gt(0).all()  # shares vary between samples


def test_bad_ratio_is_refused() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        RandomMasking(1.0)


@pytest.mark.parametrize("ratio,rows", [(0.9, 10), (0.55, 6), (0.35, 9), (0.8, 5)])
def test_visible_count_equals_k_for_awkward_ratios(ratio: float, rows: int) -> None:
    """K (Python float64) and the per-sample budget (tensor) must agree, or a visible token
    goes unencoded or a masked one leaks into the encoder."""
    tokens = grid_tokens(rows=rows, cols=10, groups=2)  # N = 20 * rows: 200, 120, 180, 100
    vis = RandomMasking(ratio)(tokens)
    assert vis.valid is None
    assert (vis.mask.sum(1) == vis.index.shape[1]).all()
    assert torch.gather(vis.mask, 1, vis.index).all()


@pytest.mark.parametrize("absent_p", [0.0, 0.4])
def test_floor_masked_rounds_like_point_mae(absent_p: float) -> None:
    """`floor="masked"` hides int(ratio * n) (Point-MAE), `visible` keeps int((1 - ratio) * n) (MAE)."""
    g = torch.Generator().manual_seed(7)
    ratio = float(torch.empty(()).uniform_(0.3, 0.9, generator=g))
    tokens = grid_tokens(absent_p=absent_p, seed=int(torch.randint(0, 1000, (), generator=g)))
    counts = [int(c) for c in tokens.present.sum(1)]
    masked = RandomMasking(ratio, floor="masked")(tokens)
    assert masked.mask.sum(1).tolist() == [max(1, c - math.floor(ratio * c)) for c in counts]
    assert not (masked.mask & ~tokens.present).any()
    assert masked.index.shape[1] == tokens.num_tokens - math.floor(ratio * tokens.num_tokens)
    with pytest.raises(ValueError, match="floor"):
        RandomMasking(0.6, floor="nearest")  # type: ignore[arg-type]


def test_point_cloud_config_keeps_point_maes_visible_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 groups at 0.6: Point-MAE masks int(0.6 * 64) = 38 and keeps 26 visible (MAE's rounding: 25)."""
    from maekit.cli import MaekitCLI

    from .conftest import REPO

    monkeypatch.setattr(sys, "argv", ["maekit"])
    cli = MaekitCLI(args=["-c", str(REPO / "configs" / "pointcloud" / "pretrain.yaml"), "--data.root", str(tmp_path),
                          "--model.size", "nano", "--trainer.logger", "false"], run=False)
    masking = cli.model.mae.masking
    groups = cli.model.adapter.groups
    assert groups == 64 and masking.mask_ratio == 0.6
    tokens = Tokens(values=torch.randn(3, groups, 96), coords=torch.randn(3, groups, 3),
                    group=torch.zeros(3, groups, dtype=torch.long), present=torch.ones(3, groups, dtype=torch.bool))
    vis = masking(tokens)
    assert vis.index.shape == (3, 26) and (vis.mask.sum(1) == 26).all()
