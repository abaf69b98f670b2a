"""Mask generators: which tokens the encoder sees.

Every generator decides, per sample, a set of visible tokens among the *present* ones and hands
back their indices with one shape for the whole batch, so the encoder runs on a dense (B, K, D)
tensor. Everything is argsort + gather on device: no boolean indexing, no host syncs.

When tokens may be absent, samples keep `floor((1 - ratio) * present)` visible tokens (MAE's
rounding; `floor="masked"` hides `floor(ratio * present)` instead, as Point-MAE does); K is the
largest such count, and the unused slots of a sample are marked invalid so attention ignores
them. When every token is present (`Tokens.may_be_absent` False) every sample keeps exactly K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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
        floor: which count is rounded down when `mask_ratio * present` is not whole: `visible`
            keeps `floor((1 - ratio) * n)` visible (MAE's `int(L * (1 - mask_ratio))`), `masked`
            hides `floor(ratio * n)` (Point-MAE's `int(mask_ratio * G)`: 64 groups at 0.6 keep 26
            visible, not 25).
    """

    def __init__(self, mask_ratio: float = 0.75, floor: Literal["visible", "masked"] = "visible") -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if floor not in ("visible", "masked"):
            raise ValueError(f"floor must be 'visible' or 'masked', got {floor!r}")
        self.mask_ratio = mask_ratio
        self.floor = floor

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
        if self.floor == "masked":
            return max(1, num_tokens - math.floor(self.mask_ratio * num_tokens))
        return max(1, math.floor((1.0 - self.mask_ratio) * num_tokens))

    def visible_budget(self, present: Tensor) -> Tensor:
        """(B,) how many tokens each sample keeps visible."""
        count = present.sum(1)
        # float64, the same arithmetic as `max_visible`, so an all-present sample keeps exactly K
        if self.floor == "masked":
            budget = count - torch.floor(self.mask_ratio * count.double()).long()
        else:
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
        cells = torch.floor(torch.nan_to_num(tokens.coords.float()) / self.cell_size).long()
        base = [73856093, 19349663, 83492791, 2654435761]
        primes = torch.tensor([base[i % len(base)] for i in range(cells.shape[-1])], device=cells.device)
        cell_id = ((cells * primes).sum(-1) + tokens.group * 1000003) % self._TABLE
        table = torch.rand(cells.shape[0], self._TABLE, device=cells.device)
        jitter = torch.rand(tokens.present.shape, device=cells.device)
        return 0.999 * torch.gather(table, 1, cell_id) + 0.001 * jitter


class TubeMasking(MaskGenerator):
    """VideoMAE's tube masking for time series: a spatial patch is hidden (or shown) at every date
    together, so the encoder cannot copy a masked patch from another date of the same place.

    Every (row, col) cell (and band group, with `per_group`) draws one random score per sample,
    shared by all its frames; the visible budget takes the lowest-scoring tubes. Only the tube
    at the budget's edge may be shown at some of its dates (a little jitter orders its tokens), so
    the budget stays exact. Frames that are absent simply do not count.

    Args:
        mask_ratio: fraction of present tokens to hide (VideoMAE: 0.9).
        axes: the spatial coordinate columns of `Tokens.coords` that name a tube (default row, col).
        per_group: tubes are per band group (True) or span every group of the patch (False).
    """

    _TABLE = 8191

    def __init__(self, mask_ratio: float = 0.75, axes: list[int] | None = None, per_group: bool = True) -> None:
        super().__init__(mask_ratio)
        self.axes = list(axes) if axes is not None else [0, 1]
        self.per_group = per_group

    def score(self, tokens: Tokens) -> Tensor:
        cells = tokens.coords[..., self.axes].round().long()
        primes = (73856093, 19349663, 83492791)
        uid = sum(cells[..., i] * primes[i % len(primes)] for i in range(len(self.axes)))
        if self.per_group:
            uid = uid + tokens.group.long() * 1000003
        uid = uid % self._TABLE
        table = torch.rand(cells.shape[0], self._TABLE, device=cells.device)
        jitter = torch.rand(tokens.present.shape, device=cells.device)
        return 0.999 * torch.gather(table, 1, uid) + 0.001 * jitter


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


class SaliencyMasking(MaskGenerator):
    """Motion-aware masking (MAMP, Mao et al. 2023): salient tokens are hidden more often.

    The masked set is drawn without replacement with probabilities softmax(s / temperature),
    where s is `Tokens.saliency` scaled by its per-sample maximum (Gumbel-top-k, so it stays one
    argsort). Equivalently the visible set is the budget's lowest `s / temperature + Gumbel`.
    A lower temperature concentrates the mask on the most salient tokens; a very high one is
    random masking. Tokens without saliency (`saliency` None) are masked at random.

    Args:
        mask_ratio: fraction of present tokens to hide (MAMP: 0.9).
        temperature: softmax temperature on the max-scaled saliency (MAMP's tau).
    """

    def __init__(self, mask_ratio: float = 0.9, temperature: float = 0.75) -> None:
        super().__init__(mask_ratio)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def score(self, tokens: Tokens) -> Tensor:
        u = torch.rand(tokens.present.shape, device=tokens.values.device)
        if tokens.saliency is None:
            return u
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
        s = torch.where(tokens.present, tokens.saliency.float(), 0.0)
        s = s / (s.amax(1, keepdim=True) * self.temperature).clamp(min=1e-10)
        return s + gumbel

    def choose(self, tokens: Tokens, budget: Tensor) -> Tensor:
        score = torch.where(tokens.present, self.score(tokens), torch.inf)
        rank = score.argsort(1).argsort(1)
        return rank < budget[:, None]


class GroupMasking(MaskGenerator):
    """Whole-unit masking (SkeletonMAE's body parts): every unit is hidden or shown entirely.

    A unit is one value of `Tokens.group` (a body part, a band group), optionally split further
    by the coarse cells of some coordinate axes (`within`): e.g. `within=[0, 2]` with
    `cell_size=[5, 1]` makes a unit "this body part of this person over these 5 time segments".
    Units are visited in a random order per sample and shown while the running count of their
    present tokens fits the visible budget, so a sample keeps between budget - (largest unit - 1)
    and budget tokens visible: the mask ratio is a lower bound, and parts of unequal size stay
    whole. If even the first unit is larger than the budget, its first token alone is shown (so
    the encoder always sees something); choose units smaller than the budget to avoid that.

    Args:
        mask_ratio: lower bound of the fraction of present tokens hidden.
        within: coordinate axes (columns of `Tokens.coords`) that split a group into units.
        cell_size: edge of a unit along each `within` axis, in coordinate units (one value for
            all axes, or one per axis).
    """

    _TABLE = 8191  # noise table per sample; units are hashed into it

    def __init__(self, mask_ratio: float = 0.75, within: list[int] | None = None,
                 cell_size: float | list[float] = 1.0) -> None:
        super().__init__(mask_ratio)
        self.within = list(within or [])
        sizes = cell_size if isinstance(cell_size, list) else [cell_size] * len(self.within)
        if len(sizes) != len(self.within):
            raise ValueError(f"cell_size {cell_size} needs one value per axis of within {self.within}")
        self.cell_size = [float(c) for c in sizes]

    exact_budget = False

    def unit_id(self, tokens: Tokens) -> Tensor:
        """(B, N) long: the unit of each token (a hash of its group and coarse cell)."""
        uid = tokens.group.long() * 1000003
        primes = (73856093, 19349663, 83492791, 2654435761)
        for i, (axis, size) in enumerate(zip(self.within, self.cell_size)):
            cell = torch.floor(tokens.coords[..., axis].float() / size).long()
            uid = uid + cell * primes[i % len(primes)]
        return uid % self._TABLE

    def choose(self, tokens: Tokens, budget: Tensor) -> Tensor:
        present = tokens.present
        batch, device = present.shape[0], present.device
        table = torch.rand(batch, self._TABLE, device=device)
        # one random value per unit; absent tokens after every present one
        score = torch.where(present, torch.gather(table, 1, self.unit_id(tokens)), 2.0)
        sorted_score, order = score.sort(1)
        running = torch.gather(present.long(), 1, order).cumsum(1)  # present tokens so far
        # the running count at the last token of each token's unit (all of a unit share a score)
        end = torch.searchsorted(sorted_score.contiguous(), score.contiguous(), right=True) - 1
        fits = torch.gather(running, 1, end) <= budget[:, None]
        first = torch.zeros_like(present).scatter(1, order[:, :1], True)
        return present & (fits | first)


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
