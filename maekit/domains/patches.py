"""Shared machinery of adapters for data on a regular 2D or 3D grid of channels.

Channels (bands, modalities) are grouped; each patch of each group is one token, and each group
has its own patch projection. Subclasses decide how raw channels become normalised floats
(`prepare`) and which groups a sample has (`group_presence`); everything else (patchify and
its inverse, embeddings, norm-pix targets and per-token losses, back-to-grid features) is here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from maekit.backbones import LearnedPositionTable, sincos_embedding
from maekit.errors import ConfigError
from maekit.tokens import DomainAdapter, Tokens


class PatchGridAdapter(DomainAdapter):
    """Grouped channels on a `spatial_dims`-D grid, cut into `patch_size`-edged patches.

    Args:
        channels: the model's channel names, in order.
        groups: channel groups; one token per group per patch.
        patch_size: patch edge in pixels/voxels.
        spatial_dims: 2 (images) or 3 (volumes).
        input_channels: the channels the data delivers, in order (default: all).
        norm_pix_loss: normalise each token's target by its own mean/std (MAE).
        loss: 'mse' or 'l1' per value.
        position: 'sincos' (any size) or 'learned' (a table of `max_grid` positions per axis).
        max_grid: positions per axis of the learned table.
    """

    channel_kind = "channel"

    def __init__(
        self,
        channels: Sequence[str],
        groups: Sequence[Sequence[str]],
        patch_size: int,
        spatial_dims: int,
        input_channels: Sequence[str] | None = None,
        norm_pix_loss: bool = True,
        loss: Literal["mse", "l1"] = "mse",
        position: Literal["sincos", "learned"] = "sincos",
        max_grid: int = 64,
    ) -> None:
        super().__init__()
        self.channels = list(channels)
        if not self.channels:
            raise ConfigError(f"no {self.channel_kind}s given")
        if len(set(self.channels)) != len(self.channels):
            raise ConfigError(f"{self.channel_kind} names repeat: {self.channels}")
        self.groups = [list(g) for g in groups]
        for name in (c for g in self.groups for c in g):
            self._channel_index(name, "groups")
        if sorted(c for g in self.groups for c in g) != sorted(self.channels):
            raise ConfigError(f"groups {self.groups} must cover every {self.channel_kind} of {self.channels} "
                              "exactly once")
        self.patch_size, self.spatial_dims = patch_size, spatial_dims
        self.norm_pix_loss, self.pixel_loss = norm_pix_loss, loss
        self.position, self.max_grid = position, max_grid
        self.num_groups = len(self.groups)
        self.group_index = [[self.channels.index(c) for c in g] for g in self.groups]
        self.group_width = [len(g) * patch_size**spatial_dims for g in self.groups]
        self.token_size = max(self.group_width)
        # groups whose channels are consecutive are sliced, not gathered
        self._group_slice = [(idx[0], len(idx)) if idx == list(range(idx[0], idx[0] + len(idx))) else None
                             for idx in self.group_index]
        self._uniform_width = all(w == self.token_size for w in self.group_width)
        width_mask = torch.zeros(self.num_groups, self.token_size)
        for g, w in enumerate(self.group_width):
            width_mask[g, :w] = 1.0
        self.register_buffer("width_mask", width_mask, persistent=False)
        self.input_channels: list[str] = []
        self.set_input_channels(input_channels if input_channels is not None else self.channels)
        self.embed_dim = 0

    # ----------------------------------------------------------------------------- set-up
    #: other names of channels (an older naming scheme) -> the model's names; set by subclasses
    channel_aliases: dict[str, str] = {}

    def canonical_channel(self, name: str) -> str:
        """`name`, or the model channel it is another name of (`channel_aliases`)."""
        return name if name in self.channels else self.channel_aliases.get(name, name)

    def _channel_index(self, name: str, where: str) -> int:
        name = self.canonical_channel(name)
        if name not in self.channels:
            raise ConfigError(f"unknown {self.channel_kind} {name!r} in {where}; the model's "
                              f"{self.channel_kind}s are {self.channels}")
        return self.channels.index(name)

    def set_input_channels(self, input_channels: Sequence[str]) -> None:
        """Declare which channels (and in which order) the data delivers."""
        index = [self._channel_index(c, f"input {self.channel_kind}s") for c in input_channels]
        if len(set(index)) != len(index):
            raise ConfigError(f"input {self.channel_kind}s repeat: {list(input_channels)}")
        self.input_channels = [self.canonical_channel(c) for c in input_channels]
        self._input_is_model_order = index == list(range(len(self.channels)))
        device = self.width_mask.device
        self.register_buffer("input_index", torch.tensor(index, dtype=torch.long, device=device), persistent=False)
        have = set(index)
        self.present_groups = [g for g, idx in enumerate(self.group_index) if have & set(idx)]
        partial = [self.groups[g] for g in self.present_groups if not set(self.group_index[g]) <= have]
        if partial:
            warnings.warn(f"groups {partial} are only partly in the input {self.channel_kind}s "
                          f"{list(input_channels)}; missing ones are filled with 0 (their mean)", stacklevel=2)

    def connect_datamodule(self, datamodule: Any) -> None:
        """Take the input channels from a datamodule that names them (called in `setup`)."""
        names = getattr(datamodule, self.datamodule_attribute, None)
        if names is not None and [self.canonical_channel(n) for n in names] != self.input_channels:
            self.set_input_channels(list(names))

    #: the datamodule attribute naming the channels it delivers
    datamodule_attribute = "channels"

    def build(self, embed_dim: int) -> None:
        self.embed_dim = embed_dim
        self.patch_embed = nn.ModuleList(nn.Linear(w, embed_dim) for w in self.group_width)
        self.group_embed = nn.Embedding(self.num_groups, embed_dim)
        nn.init.normal_(self.group_embed.weight, std=0.02)
        for layer in self.patch_embed:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.position == "learned":
            self.pos_table = LearnedPositionTable((self.max_grid,) * self.spatial_dims, embed_dim)

    def no_weight_decay(self) -> set[str]:
        names = {"group_embed.weight"}
        if self.position == "learned":
            names.add("pos_table.table")
        return names

    # ----------------------------------------------------------------- domain hooks
    def prepare(self, batch: dict[str, Any]) -> Tensor:
        """(B, C_model, *spatial) normalised floats; channels the data lacks are 0."""
        raise NotImplementedError

    def group_presence(self, batch: dict[str, Any]) -> Tensor | None:
        """(B, len(present_groups)) bool: which groups each sample has; None if all."""
        return None

    def scatter_input(self, x: Tensor) -> Tensor:
        """(B, C_in, ...) in input order -> (B, C_model, ...) in model order, missing channels 0."""
        if x.shape[1] != len(self.input_channels):
            raise ConfigError(f"the batch has {x.shape[1]} {self.channel_kind}s but the adapter expects "
                              f"{len(self.input_channels)} ({self.input_channels})")
        if self._input_is_model_order:
            return x
        full = x.new_zeros(x.shape[0], len(self.channels), *x.shape[2:])
        return full.index_copy(1, self.input_index, x)

    # ------------------------------------------------------------------------- tokens
    def tokenize(self, batch: dict[str, Any]) -> Tokens:
        full = self.prepare(batch)
        valid = batch.get("valid")
        if valid is not None:  # nodata values (NaN, -9999...) never reach the model: they become 0
            full = torch.where(valid.unsqueeze(1), full, 0.0)
        batch_size, spatial = full.shape[0], tuple(full.shape[2:])
        p, dims = self.patch_size, self.spatial_dims
        if len(spatial) != dims:
            raise ConfigError(f"expected {dims}-D data of shape (B, C, {'D, ' if dims == 3 else ''}H, W), "
                              f"got {tuple(full.shape)}")
        if any(s % p for s in spatial):
            raise ConfigError(f"size {'x'.join(map(str, spatial))} is not a multiple of the patch size {p}")
        grid = tuple(s // p for s in spatial)
        if self.position == "learned" and any(n > self.max_grid for n in grid):
            raise ConfigError(f"a {'x'.join(map(str, grid))} patch grid does not fit the learned position table "
                              f"of {self.max_grid} per axis; raise max_grid or use position: sincos")
        num = math.prod(grid)
        values = self._patchify(full, grid)
        groups_here = len(self.present_groups)
        device = full.device
        axes = torch.meshgrid(*[torch.arange(n, device=device) for n in grid], indexing="ij")
        coords = torch.stack([a.flatten() for a in axes], -1).float().repeat(groups_here, 1)
        group = torch.tensor(self.present_groups, device=device).repeat_interleave(num)
        present = torch.ones(batch_size, num * groups_here, dtype=torch.bool, device=device)
        if valid is not None:  # per-pixel validity: a patch is present when all its pixels are
            v = valid.reshape([batch_size] + [x for n in grid for x in (n, p)])
            for axis in range(dims):
                v = v.all(2 + axis)
            present = present & v.reshape(batch_size, num).repeat(1, groups_here)
        has_group = self.group_presence(batch)
        if has_group is not None:
            present = present & has_group.repeat_interleave(num, dim=1)
        return Tokens(
            values=values,
            coords=coords.expand(batch_size, -1, -1),
            group=group.expand(batch_size, -1),
            present=present,
            grid=grid,
            may_be_absent=valid is not None or has_group is not None,
        )

    def _patchify(self, full: Tensor, grid: tuple[int, ...]) -> Tensor:
        """(B, C_model, *spatial) -> (B, G_present * num_patches, token_size) token values, group-major."""
        batch_size, p, dims, num = full.shape[0], self.patch_size, self.spatial_dims, math.prod(grid)
        stacked = self._stacked_groups()
        if stacked is not None:  # one copy straight into token order: (B, G, n1, n2, ..., c, p, p, ...)
            first, count, width = stacked
            split = [batch_size, count, width] + [v for n in grid for v in (n, p)]
            order = [0, 1] + [3 + 2 * i for i in range(dims)] + [2] + [4 + 2 * i for i in range(dims)]
            stacked_patches = full.narrow(1, first, count * width).reshape(split).permute(order)
            return stacked_patches.reshape(batch_size, count * num, -1)
        # (B, C, n1, p, n2, p, ...) -> (B, n1, n2, ..., C, p, p, ...), then each group's channels
        split = [batch_size, len(self.channels)] + [v for n in grid for v in (n, p)]
        order = [0] + [2 + 2 * i for i in range(dims)] + [1] + [3 + 2 * i for i in range(dims)]
        patches = full.reshape(split).permute(order)
        parts = []
        for g in self.present_groups:
            where = self._group_slice[g]
            v = patches.narrow(1 + dims, *where) if where else patches[(slice(None),) * (1 + dims) + (self.group_index[g],)]
            v = v.reshape(batch_size, num, -1)
            if v.shape[-1] < self.token_size:
                v = nn.functional.pad(v, (0, self.token_size - v.shape[-1]))
            parts.append(v)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def _stacked_groups(self) -> tuple[int, int, int] | None:
        """(first channel, groups, channels per group) when the present groups are equal, unpadded
        runs of consecutive channels, one after another: their tokens are then one reshape of the
        channels, with no per-group copies and no concatenation."""
        if not self._uniform_width:
            return None
        runs = [self._group_slice[g] for g in self.present_groups]
        if any(r is None for r in runs) or len({r[1] for r in runs}) != 1:  # type: ignore[index]
            return None
        first, width = runs[0]  # type: ignore[misc]
        if any(r[0] != first + i * width for i, r in enumerate(runs)):  # type: ignore[index]
            return None
        return first, len(runs), width

    def untokenize(self, values: Tensor, tokens: Tokens) -> Tensor:
        """(B, N, P) -> (B, C_model, *spatial); channels of groups without tokens are 0."""
        grid, p, dims = tokens.grid, self.patch_size, self.spatial_dims
        batch_size, num = values.shape[0], math.prod(grid)
        out = values.new_zeros(batch_size, len(self.channels), *(n * p for n in grid))
        # (B, n1, n2, ..., c, p, p, ...) -> (B, c, n1, p, n2, p, ...)
        order = [0, 1 + dims] + [v for i in range(dims) for v in (1 + i, 2 + dims + i)]
        for slot, g in enumerate(self.present_groups):
            idx = self.group_index[g]
            v = values[:, slot * num:(slot + 1) * num, : self.group_width[g]]
            v = v.reshape([batch_size, *grid, len(idx)] + [p] * dims).permute(order)
            out[:, idx] = v.reshape(batch_size, len(idx), *(n * p for n in grid))
        return out

    def to_grid(self, features: Tensor, tokens: Tokens) -> Tensor:
        """(B, N, D) token features -> (B, D, *grid), averaged over the present groups."""
        batch_size, num = features.shape[0], math.prod(tokens.grid)
        groups_here = len(self.present_groups)
        f = features.reshape(batch_size, groups_here, num, -1)
        w = tokens.present.reshape(batch_size, groups_here, num, 1).to(f.dtype)
        mean = (f * w).sum(1) / w.sum(1).clamp(min=1.0)
        return mean.transpose(1, 2).reshape(batch_size, -1, *tokens.grid)

    # ---------------------------------------------------------------------- embedding
    def embed(self, tokens: Tokens) -> Tensor:
        num = math.prod(tokens.grid)
        values = tokens.values
        parts = [_embed_slice(self.patch_embed[g], values[:, slot * num:(slot + 1) * num, : self.group_width[g]])
                 for slot, g in enumerate(self.present_groups)]
        x = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        pos = self.pos_table(tokens.coords) if self.position == "learned" else self.encode_position(tokens.coords, x.shape[-1])
        return x + pos.to(x.dtype) + self.group_embed(tokens.group).to(x.dtype)

    def embed_visible(self, tokens: Tokens, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """Project only the visible patches: the same values as embedding all and gathering, at
        a quarter of the cost at mask 0.75. With several groups (modalities, band groups) each
        group's projection runs on the visible tokens of that group alone. A subclass that
        embeds or places tokens its own way (time series) embeds all and gathers."""
        cls = type(self)
        if cls.embed is not PatchGridAdapter.embed or cls.encode_position is not PatchGridAdapter.encode_position:
            return super().embed_visible(tokens, index)
        take = index[..., None]
        coords = torch.gather(tokens.coords, 1, take.expand(-1, -1, tokens.coords.shape[-1]))
        if len(self.present_groups) == 1:
            g = self.present_groups[0]
            values = torch.gather(tokens.values, 1, take.expand(-1, -1, tokens.values.shape[-1]))
            x = self.patch_embed[g](values[..., : self.group_width[g]])
            group_term = self.group_embed.weight[g]  # one group: every token's row is the same
        else:
            x = self._embed_rows_by_group(tokens, index)
            group_term = self.group_embed(torch.gather(tokens.group, 1, index))
        pos = self.pos_table(coords) if self.position == "learned" else self.encode_position(coords, x.shape[-1])
        return x + pos.to(x.dtype) + group_term.to(x.dtype), None

    def _embed_rows_by_group(self, tokens: Tokens, index: Tensor) -> Tensor:
        """(B, K, D) patch projections of the tokens at `index`, each through its own group's
        layer: the rows of each group are picked from the flattened batch, projected and put back
        in place, so no token is projected twice and no masked token at all."""
        batch_size, num, size = tokens.values.shape
        rows = (index + torch.arange(batch_size, device=index.device)[:, None] * num).reshape(-1)
        flat_values = tokens.values.reshape(batch_size * num, size)
        flat_group = tokens.group.reshape(-1)[rows]
        x: Tensor | None = None
        for g in self.present_groups:
            where = (flat_group == g).nonzero().squeeze(1)
            part = self.patch_embed[g](flat_values[rows[where], : self.group_width[g]])
            if x is None:
                x = part.new_zeros(rows.shape[0], part.shape[-1])
            x = x.index_copy(0, where, part)
        assert x is not None
        return x.reshape(*index.shape, -1)

    def encode_position(self, coords: Tensor, dim: int) -> Tensor:
        return sincos_embedding(coords, dim)

    # --------------------------------------------------------------------------- loss
    def _width_mask(self, tokens: Tokens) -> Tensor | None:
        """(B, N, P) 1 where a token's values are real, 0 on padding; None if nothing is padded."""
        return None if self._uniform_width else self.width_mask[tokens.group]

    def _token_stats(self, tokens: Tokens) -> tuple[Tensor | None, Tensor, Tensor]:
        m = self._width_mask(tokens)
        v = tokens.values.float()
        if m is None:  # (torch.var_mean is several times slower on CPU)
            mean = v.mean(-1, keepdim=True)
            var = (v - mean).square().sum(-1, keepdim=True) / max(v.shape[-1] - 1, 1)
            return None, mean, var
        count = m.sum(-1, keepdim=True)
        mean = (v * m).sum(-1, keepdim=True) / count
        var = (((v - mean) * m) ** 2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)
        return m, mean, var

    def target(self, tokens: Tokens) -> Tensor:
        if not self.norm_pix_loss:
            m = self._width_mask(tokens)
            return tokens.values.float() if m is None else tokens.values.float() * m
        m, mean, var = self._token_stats(tokens)
        t = (tokens.values.float() - mean) / (var + 1e-6).sqrt()
        return t if m is None else t * m

    def loss(self, pred: Tensor, target: Tensor, tokens: Tokens) -> Tensor:
        m = self._width_mask(tokens)
        if m is None:  # no (B, N, P) error tensor in forward, one gradient buffer in backward
            return _TokenError.apply(pred, target, self.pixel_loss == "l1")
        # the fused losses keep no (pred - target) copy for backward
        loss = nn.functional.l1_loss if self.pixel_loss == "l1" else nn.functional.mse_loss
        error = loss(pred, target, reduction="none")
        return (error * m).sum(-1) / m.sum(-1)

    @property
    def per_token_loss(self) -> bool:
        # targets (norm-pix statistics included) and losses here are per token; a subclass that
        # computes either differently (per frame, per band) does not inherit the claim
        cls = type(self)
        return cls.target is PatchGridAdapter.target and cls.loss is PatchGridAdapter.loss

    def head_loss(self, features: Tensor, head: nn.Linear, tokens: Tokens, index: Tensor,
                  weight: Tensor) -> Tensor | None:
        """On CPU with equal-width groups: the prediction head, the target (norm-pix included)
        and the error of the tokens at `index`, a cache-sized block of rows at a time, in fp32,
        with the gradients made on the way. Neither predictions, targets nor their gradients
        exist at full size (for 16^3 MRI tokens each is as large as the scored part of the
        input), and nothing is recomputed. Elsewhere None (the MAE applies the head and `loss`:
        one large matmul is what a GPU wants)."""
        if features.device.type != "cpu" or not self._uniform_width or head.bias is None:
            return None
        batch_size, num, size = tokens.values.shape
        flat_weight = weight.reshape(-1)
        keep = (flat_weight > 0).nonzero().squeeze(1)  # scored rows only: padding never enters
        rows = (index + torch.arange(batch_size, device=index.device)[:, None] * num).reshape(-1)[keep]
        rows_features = features.reshape(-1, features.shape[-1]).index_select(0, keep)
        inputs = (rows_features, head.weight, head.bias)
        make_grads = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        with torch.autocast(device_type="cpu", enabled=False):
            return _HeadLoss.apply(rows_features.float(), head.weight.float(), head.bias.float(),
                                   tokens.values.reshape(batch_size * num, size), rows,
                                   flat_weight[keep].float(), self.norm_pix_loss, self.pixel_loss == "l1", make_grads)

    def values_from_prediction(self, pred: Tensor, tokens: Tokens) -> Tensor:
        if self.norm_pix_loss:
            m, mean, var = self._token_stats(tokens)
            pred = pred * (var + 1e-6).sqrt() + mean
        else:
            m = self._width_mask(tokens)
        return pred if m is None else pred * m


def _embed_slice(layer: nn.Linear, x: Tensor) -> Tensor:
    """`layer(x)` for one group's slice (B, num, P) of the token values. A slice of a batch of
    several samples is no (B * num, P) view, and `nn.Linear` would copy it (and keep the copy
    for backward: as large as the input volume over all groups); a batched matmul reads it
    where it lies."""
    if x.dim() != 3 or x.shape[0] == 1 or layer.bias is None or x.stride(0) == x.shape[1] * x.stride(1):
        return layer(x)
    return torch.baddbmm(layer.bias, x, layer.weight.t().expand(x.shape[0], -1, -1))


class _TokenError(torch.autograd.Function):
    """Per-token mean squared (or absolute) error of `pred` against `target` (..., P) -> (...),
    without holding a (..., P) error tensor: forward takes tokens a block at a time, backward
    writes the gradient into one fresh buffer. Full-resolution MRI tokens (16^3 values each)
    make those tensors as large as the input volume."""

    BLOCK = 1 << 20  # values per forward block (4 MiB of fp32)

    @staticmethod
    def forward(ctx: Any, pred: Tensor, target: Tensor, l1: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pred, target)
        ctx.l1 = l1
        size = pred.shape[-1]
        flat_pred, flat_target = pred.reshape(-1, size), target.reshape(-1, size)
        out = pred.new_empty(flat_pred.shape[0])
        step = max(1, _TokenError.BLOCK // max(size, 1))
        for first in range(0, flat_pred.shape[0], step):
            rows = slice(first, first + step)
            error = flat_pred[rows] - flat_target[rows]
            error = error.abs_() if l1 else error.square_()
            torch.mean(error, -1, out=out[rows])
        return out.view(pred.shape[:-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        pred, target = ctx.saved_tensors
        error = torch.sub(pred, target)
        scale = grad[..., None] / pred.shape[-1]
        if ctx.l1:
            error.sign_().mul_(scale)
        else:
            error.mul_(scale * 2)
        return (error if ctx.needs_input_grad[0] else None,
                -error if ctx.needs_input_grad[1] else None, None)


class _HeadLoss(torch.autograd.Function):
    """sum_r weight_r * mean_p |pred_rp - target_rp|^q (q = 2, or 1 for L1) of the head's
    predictions `features @ weight.T + bias` (R, P) against the (norm-pix) targets of the token
    rows `rows` of `values`, a block of rows at a time. Forward also makes the gradients (as a
    fused linear + cross-entropy does): a block's predictions, targets and their gradient exist
    only while that block is worked on (about 2 MiB), never at (R, P), and backward only scales
    them. Three matmuls of the head in all, as a plain forward and backward take."""

    BLOCK = 1 << 19  # values per block (2 MiB of fp32: the fastest on this kit's 2-core test machine)

    @staticmethod
    def forward(ctx: Any, features: Tensor, weight: Tensor, bias: Tensor, values: Tensor,  # type: ignore[override]
                rows: Tensor, row_weight: Tensor, norm: bool, l1: bool, make_grads: bool) -> Tensor:
        size = values.shape[-1]
        loss = features.new_zeros(())
        grad_features = torch.empty_like(features) if make_grads else None
        grad_weight = torch.zeros_like(weight) if make_grads else None
        grad_bias = torch.zeros_like(bias) if make_grads else None
        step = max(1, _HeadLoss.BLOCK // max(size, 1))
        for first in range(0, rows.shape[0], step):
            block = slice(first, first + step)
            target = values.index_select(0, rows[block]).float()
            if norm:  # as `PatchGridAdapter.target`: each token by its own mean and unbiased variance
                mean = target.mean(-1, keepdim=True)
                var = (target - mean).square().sum(-1, keepdim=True) / max(size - 1, 1)
                target = (target - mean) / (var + 1e-6).sqrt()
            # prediction - target, in the block's own fresh buffer (no copy of the bias first)
            error = torch.sub(bias, target, out=target).addmm_(features[block], weight.t())
            w = row_weight[block, None]
            # per-row sum |e| or sum e^2 in one pass, without an |e| or e^2 copy of the block
            per_row = torch.linalg.vector_norm(error, 1.0 if l1 else 2.0, dim=-1, keepdim=True)
            loss += ((per_row if l1 else per_row.square()) * w).sum() / size
            if make_grads:  # d loss / d prediction, then through the head
                d = error.sign_().mul_(w / size) if l1 else error.mul_(w * (2.0 / size))
                torch.mm(d, weight, out=grad_features[block])  # type: ignore[index]
                grad_weight.addmm_(d.t(), features[block])  # type: ignore[union-attr]
                grad_bias += d.sum(0)  # type: ignore[operator]
        ctx.grads = (grad_features, grad_weight, grad_bias)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        made = ctx.grads
        ctx.grads = None
        if made[0] is None:
            raise RuntimeError("_HeadLoss was run without make_grads; its backward has nothing to scale")
        out = [g * grad if need else None for g, need in zip(made, ctx.needs_input_grad[:3])]
        return (*out, None, None, None, None, None, None)
