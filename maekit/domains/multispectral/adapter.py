"""Multispectral rasters (NAIP, Sentinel-2, MODIS TOA...) as tokens: one token per band group per patch.

A model is built for a list of *model bands* split into groups; each group has its own patch
projection, so a model pretrained on 14 bands runs on any subset of them. Groups with none of
the input bands produce no tokens; bands missing from a partly present group are filled with
their mean (0 after normalisation). Pixels marked invalid (nodata) make their patch absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from maekit.domains.multispectral.spec import PresetName, get_preset
from maekit.domains.patches import PatchGridAdapter
from maekit.errors import ConfigError

__all__ = ["MultispectralAdapter", "PresetName"]


class MultispectralAdapter(PatchGridAdapter):
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

    channel_kind = "band"
    datamodule_attribute = "bands"

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
        p = get_preset(preset) if preset else None
        names = list(bands if bands is not None else (p.bands if p else []))
        if not names:
            raise ConfigError("MultispectralAdapter needs `bands` or a `preset`")
        from_preset = p is not None and bands is None
        if groups is None:
            groups = [list(g) for g in p.groups] if from_preset else [[b] for b in names]  # type: ignore[union-attr]
        super().__init__(names, groups, patch_size, 2, input_bands, norm_pix_loss, loss, position, max_grid)

        def stat(given: list[float] | None, preset_value: Sequence[float] | None, default: float,
                 what: str) -> Tensor:
            if given is None:
                given = list(preset_value) if from_preset and preset_value is not None else [default] * len(names)
            if len(given) != len(names):
                raise ConfigError(f"{what} has {len(given)} values but there are {len(names)} bands {names}")
            return torch.tensor(given, dtype=torch.float32)

        self.register_buffer("mean", stat(mean, p.mean if p else None, 0.0, "mean"))
        self.register_buffer("std", stat(std, p.std if p else None, 1.0, "std"))
        self.register_buffer("scale", stat(scale, p.scale if p else None, 1.0, "scale"))
        self.register_buffer("offset", stat(offset, p.offset if p else None, 0.0, "offset"))
        if bool((self.std <= 0).any()):
            raise ConfigError(f"std must be positive for every band, got {self.std.tolist()}")
        self.rgb = list(rgb) if rgb is not None else (list(p.rgb) if from_preset else names[:3])  # type: ignore[union-attr]

    @property
    def bands(self) -> list[str]:
        return self.channels

    @property
    def input_bands(self) -> list[str]:
        return self.input_channels

    @input_bands.setter
    def input_bands(self, value: list[str]) -> None:
        self.input_channels = value

    def set_input_bands(self, input_bands: Sequence[str]) -> None:
        """Declare which bands (and in which order) the data delivers."""
        self.set_input_channels(input_bands)

    def normalize(self, image: Tensor) -> Tensor:
        """(B, C_in, H, W) raw values -> (B, C_model, H, W) normalised floats (missing bands 0)."""
        if image.shape[1] != len(self.input_channels):
            raise ConfigError(f"the batch has {image.shape[1]} bands but the adapter expects "
                              f"{len(self.input_channels)} ({self.input_channels})")
        idx = self.input_index
        # one fused pass: ((raw * scale + offset) - mean) / std == raw * a + b
        a = (self.scale / self.std)[idx, None, None]
        b = ((self.offset - self.mean) / self.std)[idx, None, None]
        return self.scatter_input(torch.addcmul(b, image.float(), a))

    def prepare(self, batch: dict[str, Any]) -> Tensor:
        return self.normalize(batch["image"])

    def picture(self, native: Tensor) -> Tensor:
        """(B, C_model, H, W) -> (B, H, W, 3): the display bands (`rgb`) that the input has."""
        have = set(self.input_channels)
        shown = [b for b in self.rgb if b in have] or self.input_channels[:3]
        shown = (shown * 3)[:3] if len(shown) < 3 else shown
        idx = torch.tensor([self.channels.index(b) for b in shown], device=native.device)
        return native[:, idx].permute(0, 2, 3, 1)
