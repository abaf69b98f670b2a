"""Time series of one place as tokens: T acquisitions, each a chip of the same grid.

Time is a token coordinate, not a channel and not a new engine. A frame is tokenized by the
single-date adapter it extends (band groups today; any `PatchGridAdapter` whose `embed` works on
one date, e.g. a wavelength-conditioned one, by the same mixin), and its tokens get three more
coordinates: the frame index and the acquisition date (year, day of year); the sample's
latitude/longitude follow. An acquisition that is missing or fully clouded (`date_present`
False, or every pixel invalid) gives absent tokens, so one model runs on 1..T dates.

Batch contract: `image` (B, T, C, H, W), `dates` (B, T, 2) long (year, day of year),
`date_present` (B, T) bool, optional `valid` (B, T, H, W) bool and `latlon` (B, 2) degrees. A
(B, C, H, W) image is one undated frame.

Token coordinates (B, N, 7): row, col, frame, year, day of year, lat, lon; NaN where unknown
(no dates / no location in the batch), which switches that term off for the token, as
Prithvi-EO-2.0 skips its encodings when it is given no coordinates.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from maekit.backbones import sincos_embedding
from maekit.domains.multispectral.adapter import MultispectralAdapter, PresetName
from maekit.domains.multispectral.wavelength import SpectralTokens, WavelengthAdapter
from maekit.errors import ConfigError
from maekit.tokens import Tokens

FramePosition = Literal["sincos", "prithvi", "none"]
#: columns of the temporal token coordinates
ROW, COL, FRAME, YEAR, DOY, LAT, LON = range(7)


def sincos_f32(dim: int, positions: Tensor) -> Tensor:
    """(..., dim) sin-cos code of `positions` in float32 arithmetic, frequencies
    1/10000^(2i/dim), sines then cosines: the formula Prithvi-EO-2.0's date and location
    encoders evaluate in float32 (kept in float32 so features match the trained model's)."""
    if dim % 2:
        raise ConfigError(f"a sin-cos code needs an even width, not {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float32, device=positions.device) / (dim / 2.0)
    omega = 1.0 / torch.pow(torch.tensor(10000.0, device=positions.device), omega)
    angles = positions.float().unsqueeze(-1) * omega
    return torch.cat([angles.sin(), angles.cos()], -1)


def pair_code(dim: int, first: Tensor, second: Tensor) -> Tensor:
    """(..., dim): `first` coded on dim // 2 channels, `second` on the rest (year | day of
    year, lat | lon); 0 where either is NaN (unknown)."""
    code = torch.cat([sincos_f32(dim // 2, torch.nan_to_num(first)),
                      sincos_f32(dim - dim // 2, torch.nan_to_num(second))], -1)
    known = ~(first.isnan() | second.isnan())
    return code * known.unsqueeze(-1)


def frame_code(frames: Tensor, dim: int, style: FramePosition) -> Tensor:
    """(..., dim) position of the frame index: full-width sin-cos (`sincos`), sin-cos on the last
    4/16 of the channels (`prithvi`: the time part of Prithvi's 3D sin-cos table, whose first
    12/16 hold column and row), or 0 (`none`)."""
    if style == "none":
        return frames.new_zeros(*frames.shape, dim, dtype=torch.float32)
    if style == "sincos":
        return sincos_embedding(frames.unsqueeze(-1), dim)
    if dim % 16:
        raise ConfigError(f"frame_position 'prithvi' needs a width divisible by 16, not {dim}")
    part = dim // 16 * 4
    omega = 1.0 / 10000 ** (torch.arange(part // 2, dtype=torch.float64, device=frames.device) / (part / 2.0))
    angles = frames.double().unsqueeze(-1) * omega
    code = torch.cat([angles.sin(), angles.cos()], -1).float()
    return nn.functional.pad(code, (dim - part, 0))


class TemporalMixin:
    """Frames for any single-date `PatchGridAdapter`: put it first in the bases
    (`class T(TemporalMixin, SomeAdapter)`); the single-date adapter's `tokenize`, `embed`,
    `untokenize` and `encode_position` run per frame, and this adds the time terms.

    Attributes set by the subclass constructor (`init_time`): `frame_position`,
    `date_encoding`, `location_encoding`, `coords_scale`.
    """

    frame_position: FramePosition
    date_encoding: bool
    location_encoding: bool
    coords_scale: Literal["learned", "fixed"]

    def init_time(self, frame_position: FramePosition, date_encoding: bool, location_encoding: bool,
                  coords_scale: Literal["learned", "fixed"]) -> None:
        if frame_position not in ("sincos", "prithvi", "none"):
            raise ConfigError(f"frame_position must be sincos, prithvi or none, not {frame_position!r}")
        if coords_scale not in ("learned", "fixed"):
            raise ConfigError(f"coords_scale must be learned or fixed, not {coords_scale!r}")
        self.frame_position, self.date_encoding = frame_position, date_encoding
        self.location_encoding, self.coords_scale = location_encoding, coords_scale

    def build_time(self, embed_dim: int) -> None:
        """The learned (init 0.1, as Prithvi-EO-2.0-TL) or fixed (1) scales of the date and
        location codes."""
        for name, on in (("time_scale", self.date_encoding), ("location_scale", self.location_encoding)):
            if not on:
                continue
            if self.coords_scale == "learned":
                setattr(self, name, nn.Parameter(torch.full((1,), 0.1)))
            else:
                self.register_buffer(name, torch.ones(1))  # type: ignore[attr-defined]
        if self.date_encoding and embed_dim % 4:
            raise ConfigError(f"the date code needs a width divisible by 4, not {embed_dim}")

    # ----------------------------------------------------------------------- tokens
    def tokenize(self, batch: dict[str, Any]) -> Tokens:
        image = batch["image"]
        if image.dim() == 4:  # one undated frame
            image = image.unsqueeze(1)
            batch = {**batch, "image": image, **({"valid": batch["valid"].unsqueeze(1)} if "valid" in batch else {})}
        if image.dim() != 5:
            raise ConfigError(f"a time-series batch is (B, T, C, H, W), got {tuple(image.shape)}")
        b, t = image.shape[:2]
        flat = {k: v for k, v in batch.items() if k not in ("image", "valid", "dates", "date_present", "latlon")}
        flat["image"] = image.flatten(0, 1)
        if batch.get("valid") is not None:
            flat["valid"] = batch["valid"].flatten(0, 1)
        frame_tokens = super().tokenize(flat)  # type: ignore[misc]
        n = frame_tokens.num_tokens
        device = image.device
        coords = torch.full((b, t, n, 7), math.nan, device=device)
        coords[..., :2] = frame_tokens.coords.reshape(b, t, n, 2)
        coords[..., FRAME] = torch.arange(t, device=device, dtype=torch.float32)[None, :, None]
        dates = batch.get("dates")
        if dates is not None:
            if tuple(dates.shape) != (b, t, 2):
                raise ConfigError(f"dates must be (B, T, 2) = ({b}, {t}, 2) (year, day of year), got {tuple(dates.shape)}")
            coords[..., YEAR:DOY + 1] = dates.float()[:, :, None, :]
        latlon = batch.get("latlon")
        if latlon is not None:
            if tuple(latlon.shape) != (b, 2):
                raise ConfigError(f"latlon must be (B, 2) degrees, got {tuple(latlon.shape)}")
            coords[..., LAT:LON + 1] = latlon.float()[:, None, None, :]
        present = frame_tokens.present.reshape(b, t, n)
        date_present = batch.get("date_present")
        if date_present is not None:
            present = present & date_present.bool()[:, :, None]
        # `replace` keeps what a single-date adapter's own tokens carry (e.g. the band layout of
        # `SpectralTokens`); every frame of a batch has the same layout
        return replace(
            frame_tokens,
            values=frame_tokens.values.reshape(b, t * n, -1),
            coords=coords.reshape(b, t * n, 7),
            group=frame_tokens.group.reshape(b, t * n),
            present=present.reshape(b, t * n),
            may_be_absent=frame_tokens.may_be_absent or date_present is not None,
            saliency=None,
        )

    def frame_token_count(self, tokens: Tokens) -> int:
        """Tokens per frame: one per band group present per patch."""
        return len(self.present_groups) * math.prod(tokens.grid)  # type: ignore[attr-defined]

    def _frames(self, tokens: Tokens) -> tuple[Tokens, int, int]:
        """The tokens as a batch of B x T single-date token sets (views), B and T."""
        b, total = tokens.present.shape
        n = self.frame_token_count(tokens)
        if total % n:
            raise ConfigError(f"{total} tokens are not a whole number of frames of {n}")
        t = total // n
        per_frame = replace(tokens, values=tokens.values.reshape(b * t, n, -1),
                            coords=tokens.coords[..., :2].reshape(b * t, n, 2),
                            group=tokens.group.reshape(b * t, n), present=tokens.present.reshape(b * t, n),
                            saliency=None)
        return per_frame, b, t

    def untokenize(self, values: Tensor, tokens: Tokens) -> Tensor:
        """(B, N, P) -> (B, T, C_model, H, W)."""
        per_frame, b, t = self._frames(tokens)
        out = super().untokenize(values.reshape(b * t, per_frame.num_tokens, -1), per_frame)  # type: ignore[misc]
        return out.reshape(b, t, *out.shape[1:])

    def to_grid(self, features: Tensor, tokens: Tokens) -> Tensor:
        """(B, N, D) -> (B, D, rows, cols), averaged over the present frames and groups."""
        _, b, t = self._frames(tokens)
        num = math.prod(tokens.grid)
        f = features.reshape(b, -1, num, features.shape[-1])
        w = tokens.present.reshape(b, -1, num, 1).to(f.dtype)
        mean = (f * w).sum(1) / w.sum(1).clamp(min=1.0)
        return mean.transpose(1, 2).reshape(b, -1, *tokens.grid)

    # ----------------------------------------------------------------------- loss
    # the single-date adapter scores one frame's tokens (a wavelength-conditioned head reads the
    # frame's band layout), so target, loss and values run per frame and are laid back in order
    def target(self, tokens: Tokens) -> Tensor:
        per_frame, b, _ = self._frames(tokens)
        out = super().target(per_frame)  # type: ignore[misc]
        return out.reshape(b, -1, *out.shape[2:])

    def loss(self, pred: Tensor, target: Tensor, tokens: Tokens) -> Tensor:
        per_frame, b, t = self._frames(tokens)
        n = per_frame.num_tokens
        out = super().loss(pred.reshape(b * t, n, -1), target.reshape(b * t, n, -1), per_frame)  # type: ignore[misc]
        return out.reshape(b, t * n)

    def values_from_prediction(self, pred: Tensor, tokens: Tokens) -> Tensor:
        per_frame, b, t = self._frames(tokens)
        frames = pred.reshape(b * t, per_frame.num_tokens, -1)
        out = super().values_from_prediction(frames, per_frame)  # type: ignore[misc]
        return out.reshape(b, -1, *out.shape[2:])

    # ----------------------------------------------------------------------- embedding
    def time_terms(self, coords: Tensor, dim: int, scaled: bool = True) -> Tensor:
        """(B, N, dim) frame position + scaled date code + scaled location code."""
        out = frame_code(coords[..., FRAME], dim, self.frame_position)
        if self.date_encoding:
            code = pair_code(dim, coords[..., YEAR], coords[..., DOY])
            out = out + (self.time_scale * code if scaled else code)  # type: ignore[attr-defined]
        if self.location_encoding and scaled:
            out = out + self.location_scale * pair_code(dim, coords[..., LAT], coords[..., LON])  # type: ignore[attr-defined]
        return out

    def embed(self, tokens: Tokens) -> Tensor:
        per_frame, b, t = self._frames(tokens)
        x = super().embed(per_frame)  # type: ignore[misc]
        x = x.reshape(b, t * per_frame.num_tokens, -1)
        return x + self.time_terms(tokens.coords, x.shape[-1]).to(x.dtype)

    def encode_position(self, coords: Tensor, dim: int) -> Tensor:
        """Decoder positions: the single-date position of (row, col) + frame + unscaled date code."""
        spatial = super().encode_position(coords[..., :2], dim)  # type: ignore[misc]
        if coords.shape[-1] == 2:  # one frame's (row, col), from the single-date `embed`
            return spatial
        return spatial + self.time_terms(coords, dim, scaled=False)

    def picture(self, native: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, H, T * W, 3): the frames side by side."""
        if native.dim() == 5:
            b, t = native.shape[:2]
            frames = super().picture(native.flatten(0, 1))  # type: ignore[misc]
            return frames.reshape(b, t, *frames.shape[1:]).permute(0, 2, 1, 3, 4).flatten(2, 3)
        return super().picture(native)  # type: ignore[misc]

    def no_weight_decay(self) -> set[str]:
        names = set(super().no_weight_decay())  # type: ignore[misc]
        return names | {n for n in ("time_scale", "location_scale") if isinstance(getattr(self, n, None), nn.Parameter)}


class TemporalMultispectralAdapter(TemporalMixin, MultispectralAdapter):
    """Band-group multispectral tokens over T dates (Prithvi-EO-2.0 / SatMAE-style time series).

    Args (besides `MultispectralAdapter`'s):
        frame_position: position of the frame index: `sincos` (full width, added), `prithvi`
            (sin-cos in the last 4/16 channels, Prithvi's 3D table) or `none`.
        date_encoding: add scale x [sin-cos(year) | sin-cos(day of year)] (Prithvi-EO-2.0-TL).
        location_encoding: add scale x [sin-cos(lat) | sin-cos(lon)] (needs `latlon` in the batch).
        coords_scale: the two scales are `learned` (init 0.1) or `fixed` at 1.
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
        frame_position: FramePosition = "sincos",
        date_encoding: bool = True,
        location_encoding: bool = False,
        coords_scale: Literal["learned", "fixed"] = "learned",
        band_aliases: dict[str, str] | None = None,
    ) -> None:
        super().__init__(preset, bands, groups, patch_size, mean, std, scale, offset, input_bands, rgb,
                         norm_pix_loss, loss, position, max_grid, band_aliases)
        self.init_time(frame_position, date_encoding, location_encoding, coords_scale)

    def build(self, embed_dim: int) -> None:
        super().build(embed_dim)
        self.build_time(embed_dim)


class TemporalWavelengthAdapter(TemporalMixin, WavelengthAdapter):
    """Any sensor, any dates, any bands in one model: `WavelengthAdapter` tokens (projections
    generated from each band's wavelength) for each of T dates, with the date / frame / location
    coordinates of `TemporalMixin`; absent dates are absent tokens.

    Batches: the time-series contract (`image` (B, T, C, H, W), `dates`, `date_present`,
    optional `valid` (B, T, H, W) and `latlon`) with the any-sensor keys (`wavelengths` /
    `bandwidths` or `bands`, `mean`, `std`, `gsd_m`) for the C bands every frame shares; or raw
    time series of the sensor given at construction (bands from the datamodule). With
    `wavelengths` and no `mean`/`std`, each band is standardised over the present dates of the
    batch (absent ones do not count, so an absent date is the same as a dropped one).

    Args: `WavelengthAdapter`'s, then `frame_position`, `date_encoding`, `location_encoding` and
    `coords_scale` as `TemporalMultispectralAdapter`'s. The frame index defaults to `none`: with
    dates as coordinates, a date left out or marked absent changes nothing else.
    """

    def __init__(
        self,
        sensor: str | dict[str, Any] | None = None,
        bands: list[str] | None = None,
        patch_size: int = 16,
        tokens_per_patch: Literal["one", "group"] = "one",
        group_edges_nm: list[float] | None = None,
        code_width: int = 128,
        decoder_rank: int = 16,
        bandwidth_dropout: float = 0.2,
        gsd_positions: bool = False,
        reference_gsd_m: float = 10.0,
        norm_pix_loss: bool = True,
        loss: Literal["mse", "l1"] = "mse",
        frame_position: FramePosition = "none",
        date_encoding: bool = True,
        location_encoding: bool = False,
        coords_scale: Literal["learned", "fixed"] = "learned",
    ) -> None:
        super().__init__(sensor, bands, patch_size, tokens_per_patch, group_edges_nm, code_width, decoder_rank,
                         bandwidth_dropout, gsd_positions, reference_gsd_m, norm_pix_loss, loss)
        self.init_time(frame_position, date_encoding, location_encoding, coords_scale)

    def build(self, embed_dim: int) -> None:
        super().build(embed_dim)
        self.build_time(embed_dim)

    def frame_token_count(self, tokens: Tokens) -> int:
        """Tokens per frame: one per spectral token group present per patch."""
        if not isinstance(tokens, SpectralTokens):
            raise ConfigError("TemporalWavelengthAdapter works on the tokens its own `tokenize` made")
        return tokens.slots.shape[0] * math.prod(tokens.grid)

    def tokenize(self, batch: dict[str, Any]) -> Tokens:
        image = batch["image"]
        if (image.dim() == 5 and batch.get("wavelengths") is not None
                and (batch.get("mean") is None or batch.get("std") is None)):
            # statistics over the present dates only (the single-date path would count absent ones)
            present = batch.get("date_present")
            frames = image.float().transpose(1, 2).flatten(2)  # (B, C, T*H*W)
            if present is not None:
                keep = present.bool()[:, :, None].expand(-1, -1, image.shape[-2] * image.shape[-1]).flatten(1)
                if not bool(keep.any()):
                    raise ConfigError("every date of this batch is absent (date_present is all False)")
                values = frames.transpose(0, 1)[:, keep]  # (C, kept pixels)
            else:
                values = frames.transpose(0, 1).flatten(1)
            batch = {**batch, "mean": values.mean(1), "std": values.std(1).clamp(min=1e-6)}
        return super().tokenize(batch)
