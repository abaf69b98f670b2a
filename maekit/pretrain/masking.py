"""Mask generators: which tokens the encoder sees.

Every generator decides, per sample, a set of visible tokens among the *present* ones and hands
back their indices with one shape for the whole batch, so the encoder runs on a dense (B, K, D)
tensor. Everything is argsort + gather on device: no boolean indexing, no host syncs.

When tokens may be absent, samples keep `floor((1 - ratio) * present)` visible tokens; K is the
largest such count, and the unused slots of a sample are marked invalid so attention ignores
them. When every token is present (`Tokens.may_be_absent` False) every sample keeps exactly K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from maekit.tokens import Tokens


@dataclass
class Visible:
    """The tokens an encoder sees.

    Attributes:
        index: (B, K) token indices, visible ones first.
        valid: (B, K) bool, False for padding slots; None when every slot is a visible token.
        mask: (B, N) bool, True where a token is visible.
    """

    index: Tensor
    valid: Tensor | None
    mask: Tensor


class MaskGenerator:
    """Base class: subclasses score tokens (lower = visible first) or decide `visible` directly.

    Args:
        mask_ratio: fraction of each sample's present tokens to hide.
    """

    def __init__(self, mask_ratio: float = 0.75) -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio

    #: True when `choose` always shows exactly the budget (so all-present batches need no padding)
    exact_budget = True

    def __call__(self, tokens: Tokens) -> Visible:
        present = tokens.present
        budget = self.visible_budget(present)
        visible = self.choose(tokens, budget)
        exact = self.exact_budget and not tokens.may_be_absent
        return _visible_to_index(visible, self.max_visible(tokens.num_tokens), padded=not exact)

    def max_visible(self, num_tokens: int) -> int:
        """K: the visible count of a sample whose tokens are all present."""
        return max(1, math.floor((1.0 - self.mask_ratio) * num_tokens))

    def visible_budget(self, present: Tensor) -> Tensor:
        """(B,) how many tokens each sample keeps visible."""
        count = present.sum(1)
        # float64, the same arithmetic as `max_visible`, so an all-present sample keeps exactly K
        budget = torch.floor((1.0 - self.mask_ratio) * count.double()).long()
        return torch.minimum(budget.clamp(min=1), count)

    def score(self, tokens: Tokens) -> Tensor:
        """(B, N) in [0, 1): lower scores become visible first."""
        return torch.rand(tokens.present.shape, device=tokens.values.device)

    def choose(self, tokens: Tokens, budget: Tensor) -> Tensor:
        """(B, N) bool: the `budget` lowest-scoring present tokens of each sample."""
        score = torch.where(tokens.present, self.score(tokens), 2.0)
        rank = score.argsort(1).argsort(1)
        return rank < budget[:, None]


class RandomMasking(MaskGenerator):
    """MAE: a uniformly random subset of present tokens stays visible."""


class BlockMasking(MaskGenerator):
    """SimMIM-style coarse masking: tokens in the same coarse cell are hidden or shown together.

    Args:
        mask_ratio: fraction of present tokens to hide.
        cell_size: edge of a coarse cell in the units of `Tokens.coords` (e.g. 2 patches, so a
            model with patch 4 is masked in 8-pixel blocks as in SatVision-TOA).
    """

    _TABLE = 8191  # noise table per sample; cells are hashed into it

    def __init__(self, mask_ratio: float = 0.6, cell_size: float = 2.0) -> None:
        super().__init__(mask_ratio)
        self.cell_size = cell_size

    def score(self, tokens: Tokens) -> Tensor:
        cells = torch.floor(tokens.coords.float() / self.cell_size).long()
        primes = torch.tensor([73856093, 19349663, 83492791, 2654435761][: cells.shape[-1]],
                              device=cells.device)
        cell_id = ((cells * primes).sum(-1) + tokens.group * 1000003) % self._TABLE
        table = torch.rand(cells.shape[0], self._TABLE, device=cells.device)
        jitter = torch.rand(tokens.present.shape, device=cells.device)
        return 0.999 * torch.gather(table, 1, cell_id) + 0.001 * jitter


class GroupDirichletMasking(MaskGenerator):
    """MultiMAE / BM-MAE: the visible budget is split across groups by a Dirichlet draw.

    Groups with no present token get no share. A group's share is capped at its present count,
    so a sample may keep a few tokens fewer than the plain budget.

    Args:
        mask_ratio: fraction of present tokens to hide.
        num_groups: number of groups (modalities, band groups).
        alpha: Dirichlet concentration; 1 is uniform over the simplex.
    """

    def __init__(self, mask_ratio: float = 0.75, num_groups: int = 4, alpha: float = 1.0) -> None:
        super().__init__(mask_ratio)
        self.num_groups = num_groups
        self.alpha = alpha

    exact_budget = False

    def choose(self, tokens: Tokens, budget: Tensor) -> Tensor:
        present, group = tokens.present, tokens.group
        batch, device = present.shape[0], present.device
        one_hot = torch.nn.functional.one_hot(group, self.num_groups) * present[..., None]
        per_group = one_hot.sum(1)  # (B, G) present tokens per group
        concentration = torch.full((batch, self.num_groups), self.alpha, device=device)
        share = torch._standard_gamma(concentration) * (per_group > 0)
        share = share / share.sum(1, keepdim=True).clamp(min=1e-12)
        quota = torch.minimum(torch.floor(share * budget[:, None].float()).long(), per_group)
        # rank tokens within their group by noise; absent tokens rank last in their group
        noise = torch.where(present, torch.rand(present.shape, device=device), 2.0)
        rank = (group.float() * 4.0 + noise).argsort(1).argsort(1)
        all_per_group = torch.nn.functional.one_hot(group, self.num_groups).sum(1)
        start = all_per_group.cumsum(1) - all_per_group  # first global rank of each group
        rank_in_group = rank - torch.gather(start, 1, group)
        return (rank_in_group < torch.gather(quota, 1, group)) & present


def _visible_to_index(visible: Tensor, max_visible: int, padded: bool) -> Visible:
    """Indices of visible tokens first (B, K), plus which slots hold one."""
    noise = torch.rand(visible.shape, device=visible.device)
    order = torch.where(visible, noise, noise + 2.0).argsort(1)
    index = order[:, :max_visible]
    valid = None
    if padded:
        count = visible.sum(1, keepdim=True)
        valid = torch.arange(max_visible, device=visible.device)[None, :] < count
    return Visible(index=index, valid=valid, mask=visible)
