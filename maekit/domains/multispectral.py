"""Multispectral rasters (NAIP, Sentinel-2, MODIS TOA...) as tokens: one token per band group per patch.

A model is built for a list of *model bands* split into groups; each group has its own patch
projection, so a model pretrained on 14 bands runs on any subset of them. Groups with none of
the input bands produce no tokens; bands missing from a partly present group are filled with
their mean (0 after normalisation). Pixels marked invalid (nodata) make their patch absent.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from maekit.backbones import LearnedPositionTable, sincos_embedding
from maekit.datasets.bands import get_preset
from maekit.errors import ConfigError
from maekit.tokens import DomainAdapter, Tokens

PresetName = Literal["naip", "sentinel2", "toa"]


class MultispectralAdapter(DomainAdapter):
    """Adapter for multispectral image chips.

    Args:
        preset: sensor defaults (bands, groups, scaling, statistics, display bands); every
            argument given explicitly overrides the preset.
        bands: the model's band names, in order.
        groups: band groups (lists of names); one token per group per patch.
        patch_size: patch edge in pixels.
        mean, std: per-band statistics in physical units (after scale/offset).
        scale, offset: per-band raw -> physical mapping (`raw * scale + offset`).
        input_bands: names of the bands the data delivers, in order (default: the model bands).
            Set from the datamodule when training through Lightning.
        rgb: three band names shown in figures.
        norm_pix_loss: normalise each token's target by its own mean/std (MAE).
        loss: 'mse' (MAE) or 'l1' (SimMIM / SatVision-TOA) per pixel.
        position: 'sincos' (any image size) or 'learned' (a table of `max_grid`^2 positions).
        max_grid: rows/cols of the learned position table.
    """

    def __init__(
        self,
        preset: PresetName | None = None,
        bands: list[str] | None = None,
        groups: list[list[str]] | None = None,
        patch_size: int = 16,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        scale: list[float] | None = None,
        offset: list[float] | None = None,
        input_bands: list[str] | None = None,
        rgb: list[str] | None = None,
        norm_pix_loss: bool = True,
        loss: Literal["mse", "l1"] = "mse",
        position: Literal["sincos", "learned"] = "sincos",
        max_grid: int = 64,
    ) -> None:
        super().__init__()
        p = get_preset(preset) if preset else None
        self.bands: list[str] = list(bands if bands is not None else (p.bands if p else []))
        if not self.bands:
            raise ConfigError("MultispectralAdapter needs `bands` or a `preset`")
        if len(set(self.bands)) != len(self.bands):
            raise ConfigError(f"band names repeat: {self.bands}")
        n = len(self.bands)
        if groups is None:
            groups = [list(g) for g in p.groups] if p and bands is None else [[b] for b in self.bands]
        self.groups: list[list[str]] = [list(g) for g in groups]
        seen = [b for g in self.groups for b in g]
        for name in seen:
            self._band_index(name, "groups")
        if sorted(seen) != sorted(self.bands):
            raise ConfigError(f"groups {self.groups} must cover every band of {self.bands} exactly once")

        def stat(given: list[float] | None, preset_value: Sequence[float] | None, default: float,
                 what: str) -> Tensor:
            if given is None:
                given = list(preset_value) if preset_value is not None and bands is None else [default] * n
            if len(given) != n:
                raise ConfigError(f"{what} has {len(given)} values but there are {n} bands {self.bands}")
            return torch.tensor(given, dtype=torch.float32)

        self.register_buffer("mean", stat(mean, p.mean if p else None, 0.0, "mean"))
        self.register_buffer("std", stat(std, p.std if p else None, 1.0, "std"))
        self.register_buffer("scale", stat(scale, p.scale if p else None, 1.0, "scale"))
        self.register_buffer("offset", stat(offset, p.offset if p else None, 0.0, "offset"))
        if bool((self.std <= 0).any()):
            raise ConfigError(f"std must be positive for every band, got {self.std.tolist()}")
        self.patch_size = patch_size
        self.norm_pix_loss = norm_pix_loss
        self.pixel_loss = loss
        self.position = position
        self.max_grid = max_grid
        self.rgb = list(rgb) if rgb is not None else (list(p.rgb) if p and bands is None else self.bands[:3])
        self.num_groups = len(self.groups)
        self.group_width = [len(g) * patch_size**2 for g in self.groups]
        self.token_size = max(self.group_width)
        self.group_band_index = [[self.bands.index(b) for b in g] for g in self.groups]
        # groups whose bands are consecutive model bands are sliced, not gathered
        self._group_slice = [(idx[0], len(idx)) if idx == list(range(idx[0], idx[0] + len(idx))) else None
                             for idx in self.group_band_index]
        self._uniform_width = all(w == self.token_size for w in self.group_width)
        width_mask = torch.zeros(self.num_groups, self.token_size)
        for g, w in enumerate(self.group_width):
            width_mask[g, :w] = 1.0
        self.register_buffer("width_mask", width_mask, persistent=False)
        self.input_bands: list[str] = []
        self.set_input_bands(input_bands if input_bands is not None else self.bands)
        self.embed_dim = 0

    # ----------------------------------------------------------------------------- set-up
    def _band_index(self, name: str, where: str) -> int:
        if name not in self.bands:
            raise ConfigError(f"unknown band {name!r} in {where}; the model's bands are {self.bands}")
        return self.bands.index(name)

    def set_input_bands(self, input_bands: Sequence[str]) -> None:
        """Declare which bands (and in which order) the data delivers."""
        index = [self._band_index(b, "input bands") for b in input_bands]
        if len(set(index)) != len(index):
            raise ConfigError(f"input bands repeat: {list(input_bands)}")
        self.input_bands = list(input_bands)
        self._input_is_model_order = index == list(range(len(self.bands)))
        self.register_buffer("input_index", torch.tensor(index, dtype=torch.long, device=self.mean.device),
                             persistent=False)
        have = set(index)
        self.present_groups = [g for g, idx in enumerate(self.group_band_index) if have & set(idx)]
        partial = [self.groups[g] for g in self.present_groups if not set(self.group_band_index[g]) <= have]
        if partial:
            warnings.warn(f"band groups {partial} are only partly in the input bands {list(input_bands)}; "
                          "missing bands are filled with their mean", stacklevel=2)

    def connect_datamodule(self, datamodule: Any) -> None:
        """Take the input bands from a datamodule that names them (called in `setup`)."""
        data_bands = getattr(datamodule, "bands", None)
        if data_bands is not None and list(data_bands) != self.input_bands:
            self.set_input_bands(list(data_bands))

    def build(self, embed_dim: int) -> None:
        self.embed_dim = embed_dim
        self.patch_embed = nn.ModuleList(nn.Linear(w, embed_dim) for w in self.group_width)
        self.group_embed = nn.Embedding(self.num_groups, embed_dim)
        nn.init.normal_(self.group_embed.weight, std=0.02)
        for layer in self.patch_embed:
            nn.init.xavier_uniform_(layer.weight.view(layer.weight.shape[0], -1))
            nn.init.zeros_(layer.bias)
        if self.position == "learned":
            self.pos_table = LearnedPositionTable((self.max_grid, self.max_grid), embed_dim)

    def no_weight_decay(self) -> set[str]:
        names = {"group_embed.weight"}
        if self.position == "learned":
            names.add("pos_table.table")
        return names

    # ------------------------------------------------------------------------- tokens
    def normalize(self, image: Tensor) -> Tensor:
        """(B, C_in, H, W) raw values -> (B, C_model, H, W) normalised floats (missing bands 0)."""
        if image.shape[1] != len(self.input_bands):
            raise ConfigError(f"the batch has {image.shape[1]} bands but the adapter expects "
                              f"{len(self.input_bands)} ({self.input_bands})")
        idx = self.input_index
        # one fused pass: ((raw * scale + offset) - mean) / std == raw * a + b
        a = (self.scale / self.std)[idx, None, None]
        b = ((self.offset - self.mean) / self.std)[idx, None, None]
        x = torch.addcmul(b, image.float(), a)
        if self._input_is_model_order:
            return x
        full = x.new_zeros(x.shape[0], len(self.bands), *x.shape[2:])
        return full.index_copy(1, idx, x)

    def tokenize(self, batch: dict[str, Any]) -> Tokens:
        image: Tensor = batch["image"]
        batch_size, _, height, width = image.shape
        p = self.patch_size
        if height % p or width % p:
            raise ConfigError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        rows, cols = height // p, width // p
        full = self.normalize(image)
        patches = full.reshape(batch_size, len(self.bands), rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        values = []
        for g in self.present_groups:
            where = self._group_slice[g]
            v = patches.narrow(3, *where) if where else patches[:, :, :, self.group_band_index[g]]
            v = v.reshape(batch_size, rows * cols, -1)
            if v.shape[-1] < self.token_size:
                v = nn.functional.pad(v, (0, self.token_size - v.shape[-1]))
            values.append(v)
        num_groups = len(self.present_groups)
        device = image.device
        r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device),
                              indexing="ij")
        coords = torch.stack([r.flatten(), c.flatten()], -1).float().repeat(num_groups, 1)
        group = torch.tensor(self.present_groups, device=device).repeat_interleave(rows * cols)
        valid = batch.get("valid")
        if valid is None:
            present = torch.ones(batch_size, rows * cols * num_groups, dtype=torch.bool, device=device)
        else:
            patch_ok = valid.reshape(batch_size, rows, p, cols, p).all(4).all(2).reshape(batch_size, -1)
            present = patch_ok.repeat(1, num_groups)
        return Tokens(
            values=values[0] if len(values) == 1 else torch.cat(values, 1),
            coords=coords.expand(batch_size, -1, -1),
            group=group.expand(batch_size, -1),
            present=present,
            grid=(rows, cols),
            may_be_absent=valid is not None,
        )

    def untokenize(self, values: Tensor, tokens: Tokens) -> Tensor:
        """(B, N, P) -> (B, C_model, H, W); bands of groups without tokens are 0."""
        rows, cols = tokens.grid
        p, batch_size = self.patch_size, values.shape[0]
        out = values.new_zeros(batch_size, len(self.bands), rows * p, cols * p)
        per_group = rows * cols
        for slot, g in enumerate(self.present_groups):
            idx = self.group_band_index[g]
            v = values[:, slot * per_group:(slot + 1) * per_group, : self.group_width[g]]
            v = v.reshape(batch_size, rows, cols, len(idx), p, p).permute(0, 3, 1, 4, 2, 5)
            out[:, idx] = v.reshape(batch_size, len(idx), rows * p, cols * p)
        return out

    def to_grid(self, features: Tensor, tokens: Tokens) -> Tensor:
        """(B, N, D) token features -> (B, D, rows, cols), averaged over present groups."""
        rows, cols = tokens.grid
        num_groups = len(self.present_groups)
        f = features.reshape(features.shape[0], num_groups, rows * cols, -1)
        w = tokens.present.reshape(features.shape[0], num_groups, rows * cols, 1).to(f.dtype)
        mean = (f * w).sum(1) / w.sum(1).clamp(min=1.0)
        return mean.transpose(1, 2).reshape(features.shape[0], -1, rows, cols)

    # ---------------------------------------------------------------------- embedding
    def embed(self, tokens: Tokens) -> Tensor:
        per_group = tokens.grid[0] * tokens.grid[1]
        parts = [
            self.patch_embed[g](tokens.values[:, slot * per_group:(slot + 1) * per_group, : self.group_width[g]])
            for slot, g in enumerate(self.present_groups)
        ]
        x = torch.cat(parts, 1)
        if self.position == "learned":
            pos = self.pos_table(tokens.coords)
        else:
            pos = self.encode_position(tokens.coords, x.shape[-1])
        return x + pos.to(x.dtype) + self.group_embed(tokens.group).to(x.dtype)

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
        error = (pred - target).abs() if self.pixel_loss == "l1" else (pred - target) ** 2
        m = self._width_mask(tokens)
        if m is None:
            return error.mean(-1)
        return (error * m).sum(-1) / m.sum(-1)

    def values_from_prediction(self, pred: Tensor, tokens: Tokens) -> Tensor:
        if self.norm_pix_loss:
            m, mean, var = self._token_stats(tokens)
            pred = pred * (var + 1e-6).sqrt() + mean
        else:
            m = self._width_mask(tokens)
        return pred if m is None else pred * m

    # ------------------------------------------------------------------------ figures
    def to_image(self, native: Tensor, reference: Tensor | None = None) -> Tensor:
        """(B, C_model, H, W) normalised -> (B, H, W, 3) in [0, 1], 2-98 % stretch per image."""
        have = set(self.input_bands)
        shown = [b for b in self.rgb if b in have] or self.input_bands[:3]
        shown = (shown * 3)[:3] if len(shown) < 3 else shown
        idx = torch.tensor([self.bands.index(b) for b in shown], device=native.device)
        x = native[:, idx].float()
        ref = (reference if reference is not None else native)[:, idx].float()
        flat = ref.flatten(2)
        lo = flat.quantile(0.02, dim=-1)[..., None, None]
        hi = flat.quantile(0.98, dim=-1)[..., None, None]
        x = ((x - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
        return x.permute(0, 2, 3, 1)
