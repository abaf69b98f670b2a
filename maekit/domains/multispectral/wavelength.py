"""Any sensor: a patch embedding generated from each band's wavelength (and bandwidth).

`MultispectralAdapter` learns one patch projection per fixed band group, so it runs on subsets
of the bands it was built for but not on a sensor it never saw. `WavelengthAdapter` instead
*generates* each band's projection from its central wavelength and bandwidth with a small
network (the idea of DOFA and Clay v1.5; written here from their papers' description, not
their code), so one set of weights embeds NAIP, Sentinel-2, Landsat, MODIS or a YAML-described
sensor, any subset, in any order:

- a band's code `z = MLP([sincos(log wavelength), sincos(log bandwidth) or a learned
  "bandwidth unknown" vector])`; its projection `W(z)` (p*p -> D) and bias `b(z)` are linear in `z`;
- a patch of bands `c` becomes `sum_c W(z_c) x_c / sqrt(C p^2) + mean_c b(z_c)` (one GEMM, the
  same cost as a fixed projection of the same bands), so the token does not depend on the order
  of the bands and its scale not on how many there are;
- the decoder is wavelength-conditioned too: the MAE's (fixed-width) decoder head emits `R`
  spectral features per pixel and band `c`'s value is their dot product with `u(z_c)` plus
  `v(z_c)`: it reconstructs exactly the bands that were fed. The loss is a mean over pixels,
  then over the token's bands, so a 13-band sensor does not outweigh a 3-band one.

One token per patch, or one per spectral group (`tokens_per_patch`), decided from
`benchmarks/wavelength_embed.py --quality` (CPU, 1 thread, 13-band generated chips, 64x64, patch 8):
both embed ~150 chips/s (forward) at width 192, but "group" cuts 3 tokens per patch (visible /
red edge + NIR / SWIR), so the encoder sees 3x the tokens, a training step took 282 vs 223 ms,
and after 120 steps its held-out per-band reconstruction error of masked patches was higher
(1.76 vs 1.36, normalised units). Hence the default `"one"`; `"group"` stays for sensors whose
regions carry unrelated signals (reflectance vs brightness temperature).

Batches: the any-sensor batch contract (`image` in physical units with per-band `wavelengths`,
`bandwidths`, `bands`, `mean`, `std`, `gsd_m`), or plain chips of the sensor given at
construction (`image` raw values, as `ChipDataModule` delivers; bands from the datamodule), or
in Python `{"image": x, "bands": [...]}` (names looked up in the sensor's table) or
`{"image": x, "wavelengths": [...]}` (nm; with `mean`/`std` when known, otherwise each band is
standardised over the batch itself).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from maekit.backbones import sincos_embedding
from maekit.domains.multispectral.sensors import SensorSpec, load_sensor, sensor_from_dict
from maekit.errors import ConfigError
from maekit.tokens import DomainAdapter, Tokens

__all__ = ["SpectralTokens", "WavelengthAdapter"]


@dataclass
class SpectralTokens(Tokens):
    """`Tokens` of a `WavelengthAdapter` batch, with the spectral layout they were cut with.

    Attributes:
        wavelengths: (C,) nm of the batch's bands, in the batch's order.
        bandwidths: (C,) nm, NaN where unknown.
        slots: (G, K) long, for each token group present, the batch band index of each of the
            K band slots of its tokens' values (-1: padding).
    """

    wavelengths: Tensor = None  # type: ignore[assignment]
    bandwidths: Tensor = None  # type: ignore[assignment]
    slots: Tensor = None  # type: ignore[assignment]


#: upper edges (nm) of the spectral regions of `tokens_per_patch="group"`: visible, red edge +
#: NIR, SWIR, thermal
DEFAULT_GROUP_EDGES_NM = (700.0, 1000.0, 2500.0)


class WavelengthAdapter(DomainAdapter):
    """Multispectral chips of any sensor, embedded with wavelength-generated patch projections.

    Args:
        sensor: the sensor of plain batches and of band names: a preset name, a YAML file, or
            the YAML mapping itself (portable in exported configs). None: batches must carry
            `wavelengths`.
        bands: the bands plain batches deliver, in order (default: all of the sensor's); the
            datamodule sets them when training through Lightning.
        patch_size: patch edge in pixels.
        tokens_per_patch: "one" token per patch for all bands, or one per spectral "group".
        group_edges_nm: upper edges of the spectral groups (group mode).
        code_width: width of the band code network.
        decoder_rank: spectral features per pixel the decoder emits (`R` above).
        bandwidth_dropout: share of training batches whose bandwidths are hidden, so the model
            also embeds bands given by wavelength alone.
        gsd_positions: scale positions by ground sample distance (Scale-MAE): a patch's
            position is in units of `patch_size * reference_gsd_m` metres.
        reference_gsd_m: metres per pixel that positions are measured in (gsd_positions).
        norm_pix_loss: normalise each band of each token's target by its own mean/std.
        loss: "mse" or "l1" per value.
    """

    channel_kind = "band"
    datamodule_attribute = "bands"
    patch_size: int
    spatial_dims = 2

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
    ) -> None:
        super().__init__()
        self.sensor: SensorSpec | None = (
            None if sensor is None else sensor_from_dict(sensor) if isinstance(sensor, Mapping) else load_sensor(sensor))
        if tokens_per_patch not in ("one", "group"):
            raise ConfigError(f"tokens_per_patch must be 'one' or 'group', got {tokens_per_patch!r}")
        self.patch_size, self.tokens_per_patch = patch_size, tokens_per_patch
        edges = list(group_edges_nm) if group_edges_nm is not None else list(DEFAULT_GROUP_EDGES_NM)
        if edges != sorted(edges) or any(e <= 0 for e in edges):
            raise ConfigError(f"group_edges_nm must be increasing positive wavelengths, got {edges}")
        self.register_buffer("group_edges", torch.tensor(edges, dtype=torch.float32), persistent=False)
        self.num_groups = len(edges) + 1 if tokens_per_patch == "group" else 1
        self.code_width, self.decoder_rank = code_width, decoder_rank
        self.token_size = decoder_rank * patch_size**2  # what the MAE decoder head emits per token
        self.bandwidth_dropout = bandwidth_dropout
        self.gsd_positions, self.reference_gsd_m = gsd_positions, reference_gsd_m
        if gsd_positions and reference_gsd_m <= 0:
            raise ConfigError(f"reference_gsd_m must be positive, got {reference_gsd_m}")
        self.norm_pix_loss, self.pixel_loss = norm_pix_loss, loss
        self.input_bands: list[str] = []
        if bands is not None or self.sensor is not None:
            self.set_input_bands(bands if bands is not None else self.sensor.band_names)  # type: ignore[union-attr]
        self.embed_dim = 0
        self._display: list[int] = [0, 0, 0]

    # ----------------------------------------------------------------------------- set-up
    @property
    def channels(self) -> list[str]:
        """The sensor's band names (descriptive; any band with a wavelength is accepted)."""
        return self.sensor.band_names if self.sensor is not None else []

    def set_input_bands(self, bands: Sequence[str]) -> None:
        """Declare which bands (by name, in order) plain batches deliver."""
        if self.sensor is None:
            raise ConfigError("bands given by name need a `sensor` (preset name or YAML) to look up their wavelengths")
        self.sensor.select(bands)  # every name must be known
        if len(set(bands)) != len(bands):
            raise ConfigError(f"input bands repeat: {list(bands)}")
        self.input_bands = list(bands)

    set_input_channels = set_input_bands

    @property
    def input_channels(self) -> list[str]:
        return self.input_bands

    def connect_datamodule(self, datamodule: Any) -> None:
        """Take the band names from a datamodule that names them (called in `setup`)."""
        names = getattr(datamodule, self.datamodule_attribute, None)
        if names is not None and list(names) != self.input_bands:
            self.set_input_bands(list(names))

    def build(self, embed_dim: int) -> None:
        self.embed_dim = embed_dim
        h, pp = self.code_width, self.patch_size**2
        self.code = nn.Sequential(nn.Linear(96, h), nn.GELU(), nn.Linear(h, h), nn.LayerNorm(h))
        self.unknown_bandwidth = nn.Parameter(torch.zeros(32))
        self.to_weight = nn.Linear(h, pp * embed_dim)
        self.to_bias = nn.Linear(h, embed_dim)
        self.to_decoder = nn.Linear(h, self.decoder_rank + 1)
        self.group_embed = nn.Embedding(self.num_groups, embed_dim)
        nn.init.normal_(self.to_weight.weight, std=1.0 / math.sqrt(h))
        nn.init.zeros_(self.to_weight.bias)
        for layer in (self.to_bias, self.to_decoder):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.group_embed.weight, std=0.02)
        nn.init.normal_(self.unknown_bandwidth, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"group_embed.weight", "unknown_bandwidth"}

    # ------------------------------------------------------------------- band codes
    def band_codes(self, wavelengths: Tensor, bandwidths: Tensor) -> Tensor:
        """(C, code_width) code of each band from its wavelength and bandwidth (NaN: unknown)."""
        w = wavelengths.float()
        bw = bandwidths.float()
        # log scale: 400 nm .. 14 um spread evenly; 100 units per octave resolve a few nm
        lam = sincos_embedding((torch.log2(w / 100.0) * 100.0)[:, None], 64)
        known = torch.isfinite(bw) & (bw > 0)
        width = sincos_embedding((torch.log2(torch.where(known, bw, 1.0)) * 10.0)[:, None], 32)
        width = torch.where(known[:, None], width, self.unknown_bandwidth.to(width.dtype))
        return self.code(torch.cat([lam, width], -1).to(self.to_weight.weight.dtype))

    # ------------------------------------------------------------------------- inputs
    def _resolve(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(normalised image (B, C, H, W), wavelengths (C,), bandwidths (C,) NaN = unknown, gsd or None)."""
        image = batch["image"]
        if image.dim() != 4:
            raise ConfigError(f"expected images of shape (B, C, H, W), got {tuple(image.shape)}")
        device, count = image.device, image.shape[1]

        def vector(value: Any, what: str) -> Tensor:
            t = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
            if t.numel() != count:
                raise ConfigError(f"{what} has {t.numel()} values but the image has {count} bands")
            return t

        names = batch.get("bands")
        if isinstance(names, (list, tuple)) and names and isinstance(names[0], (list, tuple)):
            # default-collated per-sample lists: C tuples of B names, or B lists of C names
            names = [n[0] for n in names] if len(names) == count else list(names[0])
        gsd = batch.get("gsd_m")
        if batch.get("wavelengths") is not None:
            wl = vector(batch["wavelengths"], "wavelengths")
            bw = (vector(batch["bandwidths"], "bandwidths") if batch.get("bandwidths") is not None
                  else torch.full_like(wl, float("nan")))
            x = image.float()
            if batch.get("mean") is not None and batch.get("std") is not None:
                mean, std = vector(batch["mean"], "mean"), vector(batch["std"], "std")
            else:  # no statistics known: standardise each band over this batch
                mean = x.mean((0, 2, 3))
                std = x.std((0, 2, 3)).clamp(min=1e-6)
        else:
            if names is None:
                if not self.input_bands:
                    raise ConfigError("this batch has neither `wavelengths` nor `bands`, and the adapter has no sensor")
                names = self.input_bands
            if len(names) != count:
                raise ConfigError(f"the batch has {count} bands but {len(names)} band names {list(names)}")
            if self.sensor is None:
                raise ConfigError(f"bands {list(names)} given by name, but the adapter has no sensor to look up their "
                                  "wavelengths; give `wavelengths` (nm)")
            specs = self.sensor.select([str(n) for n in names])
            wl = torch.tensor([b.wavelength_nm for b in specs], device=device)
            bw = torch.tensor([b.bandwidth_nm for b in specs], device=device)
            idx = [self.sensor.band_names.index(b.name) for b in specs]
            x = image.float()
            if batch.get("mean") is not None and batch.get("std") is not None:  # physical units (contract)
                mean, std = vector(batch["mean"], "mean"), vector(batch["std"], "std")
            else:  # raw values of the sensor
                s = self.sensor
                if s.scale is not None:
                    x = x * torch.tensor([s.scale[i] for i in idx], device=device)[:, None, None]
                if s.offset is not None:
                    x = x + torch.tensor([s.offset[i] for i in idx], device=device)[:, None, None]
                if s.mean is None or s.std is None:
                    raise ConfigError(f"sensor {s.name!r} records no mean/std; give `mean` and `std` in the batch")
                mean = torch.tensor([s.mean[i] for i in idx], device=device)
                std = torch.tensor([s.std[i] for i in idx], device=device)
            if gsd is None:
                gsd = self.sensor.gsd_m
        if bool((wl <= 0).any()) or not bool(torch.isfinite(wl).all()):
            raise ConfigError(f"wavelengths must be positive numbers of nm, got {wl.tolist()}")
        if bool((std <= 0).any()):
            raise ConfigError(f"std must be positive for every band, got {std.tolist()}")
        x = (x - mean[:, None, None]) / std[:, None, None]
        if self.training and self.bandwidth_dropout > 0 and float(torch.rand(())) < self.bandwidth_dropout:
            bw = torch.full_like(bw, float("nan"))
        return x, wl, bw, (None if gsd is None else torch.as_tensor(gsd, dtype=torch.float32).reshape(-1)[0])

    def _slots(self, wavelengths: Tensor) -> Tensor:
        """(G, K) band indices of each present token group (-1 padding)."""
        if self.tokens_per_patch == "one":
            return torch.arange(wavelengths.numel(), device=wavelengths.device)[None]
        region = torch.bucketize(wavelengths.to(self.group_edges.device), self.group_edges).tolist()
        groups = [[c for c, r in enumerate(region) if r == g] for g in range(self.num_groups)]
        width = max(len(g) for g in groups)
        rows = [g + [-1] * (width - len(g)) for g in groups if g]
        return torch.tensor(rows, dtype=torch.long, device=wavelengths.device)

    def _regions(self, tokens: SpectralTokens) -> list[int]:
        if self.tokens_per_patch == "one":
            return [0]
        first = tokens.slots[:, 0]
        return torch.bucketize(tokens.wavelengths[first].to(self.group_edges.device), self.group_edges).tolist()

    # ------------------------------------------------------------------------- tokens
    def tokenize(self, batch: dict[str, Any]) -> SpectralTokens:
        x, wl, bw, gsd = self._resolve(batch)
        valid = batch.get("valid")
        if valid is not None:
            x = torch.where(valid.unsqueeze(1), x, 0.0)
        b, c, height, width = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ConfigError(f"size {height}x{width} is not a multiple of the patch size {p}")
        rows, cols = height // p, width // p
        num = rows * cols
        patches = x.reshape(b, c, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5).reshape(b, num, c, p * p)
        slots = self._slots(wl)
        padded = torch.cat([patches, patches.new_zeros(b, num, 1, p * p)], 2)  # index -1 -> zeros
        values = padded[:, :, slots].permute(0, 2, 1, 3, 4).reshape(b, slots.shape[0] * num, -1)
        g_here = slots.shape[0]
        axes = torch.meshgrid(torch.arange(rows, device=x.device), torch.arange(cols, device=x.device), indexing="ij")
        coords = torch.stack([a.flatten() for a in axes], -1).float()
        if self.gsd_positions:
            if gsd is None:
                raise ConfigError("gsd_positions needs the ground sample distance: `gsd_m` in the batch or the sensor's")
            coords = coords * (gsd.to(coords.device) / self.reference_gsd_m)
        coords = coords.repeat(g_here, 1)
        tokens = SpectralTokens(values=values, coords=coords.expand(b, -1, -1),
                                group=torch.zeros(b, g_here * num, dtype=torch.long, device=x.device),
                                present=torch.ones(b, g_here * num, dtype=torch.bool, device=x.device),
                                grid=(rows, cols), may_be_absent=valid is not None,
                                wavelengths=wl, bandwidths=bw, slots=slots)
        regions = self._regions(tokens)
        tokens.group = torch.tensor(regions, device=x.device).repeat_interleave(num).expand(b, -1)
        if valid is not None:
            v = valid.reshape(b, rows, p, cols, p).all(4).all(2).reshape(b, num)
            tokens.present = v.repeat(1, g_here)
        display = [int((wl - t).abs().argmin()) for t in (665.0, 560.0, 490.0)]
        self._display = display  # bands `picture` shows (figures only)
        return tokens

    def untokenize(self, values: Tensor, tokens: Tokens) -> Tensor:
        """(B, N, K p^2) -> (B, C, H, W) in the batch's band order."""
        t = _spectral(tokens)
        rows, cols = t.grid
        p, b = self.patch_size, values.shape[0]
        g_here, k = t.slots.shape
        num = rows * cols
        v = values.reshape(b, g_here, num, k, p * p)
        out = values.new_zeros(b, num, t.wavelengths.numel() + 1, p * p)
        for g in range(g_here):
            out[:, :, t.slots[g]] = v[:, g]
        out = out[:, :, :-1]
        c = out.shape[2]
        return out.reshape(b, rows, cols, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * p, cols * p)

    def to_grid(self, features: Tensor, tokens: Tokens) -> Tensor:
        """(B, N, D) token features -> (B, D, rows, cols), averaged over the present groups."""
        b, num = features.shape[0], math.prod(tokens.grid)
        g_here = features.shape[1] // num
        f = features.reshape(b, g_here, num, -1)
        w = tokens.present.reshape(b, g_here, num, 1).to(f.dtype)
        mean = (f * w).sum(1) / w.sum(1).clamp(min=1.0)
        return mean.transpose(1, 2).reshape(b, -1, *tokens.grid)

    # ---------------------------------------------------------------------- embedding
    def _slot_codes(self, tokens: SpectralTokens) -> tuple[Tensor, Tensor]:
        """(G, K, code_width) codes of every slot (zeros on padding) and (G, K) real-slot flags."""
        codes = self.band_codes(tokens.wavelengths, tokens.bandwidths)
        codes = torch.cat([codes, codes.new_zeros(1, codes.shape[-1])])
        real = tokens.slots >= 0
        return codes[tokens.slots], real

    def embed(self, tokens: Tokens) -> Tensor:
        t = _spectral(tokens)
        codes, real = self._slot_codes(t)
        g_here, k = t.slots.shape
        pp, d = self.patch_size**2, self.embed_dim
        weight = self.to_weight(codes).reshape(g_here, k, pp, d) * real[..., None, None]
        count = real.sum(1).clamp(min=1)
        weight = weight / (count * pp).sqrt()[:, None, None, None]
        bias = (self.to_bias(codes) * real[..., None]).sum(1) / count[:, None]  # (G, D)
        b, n = t.values.shape[:2]
        num = n // g_here
        v = t.values.reshape(b, g_here, num, k * pp).to(weight.dtype)
        x = torch.einsum("bgnq,gqd->bgnd", v, weight.reshape(g_here, k * pp, d)) + bias[None, :, None]
        x = x.reshape(b, n, d)
        pos = self.encode_position(t.coords, d)
        return x + pos.to(x.dtype) + self.group_embed(t.group).to(x.dtype)

    def encode_position(self, coords: Tensor, dim: int) -> Tensor:
        return sincos_embedding(coords, dim)

    # --------------------------------------------------------------------------- loss
    def _band_values(self, pred: Tensor, tokens: SpectralTokens) -> Tensor:
        """Decoder features (B, N, R p^2) -> per-band predictions (B, N, K p^2) (0 on padding)."""
        codes, real = self._slot_codes(tokens)
        head = self.to_decoder(codes).float() * real[..., None]  # (G, K, R + 1)
        g_here, k = tokens.slots.shape
        b, n = pred.shape[:2]
        pp, r = self.patch_size**2, self.decoder_rank
        f = pred.float().reshape(b, g_here, n // g_here, pp, r)
        out = torch.einsum("bgnqr,gkr->bgnkq", f, head[..., :r]) + head[..., r][None, :, None, :, None]
        return out.reshape(b, n, k * pp)

    def _band_stats(self, tokens: SpectralTokens) -> tuple[Tensor, Tensor]:
        b, n = tokens.values.shape[:2]
        v = tokens.values.float().reshape(b, n, -1, self.patch_size**2)
        mean = v.mean(-1, keepdim=True)
        var = (v - mean).square().sum(-1, keepdim=True) / max(v.shape[-1] - 1, 1)
        return mean, var

    def _real(self, tokens: SpectralTokens) -> Tensor:
        """(B, N, K, 1) 1 on real band slots."""
        g_here, k = tokens.slots.shape
        b, n = tokens.values.shape[:2]
        real = (tokens.slots >= 0).float()[None, :, None, :, None].expand(b, g_here, n // g_here, k, 1)
        return real.reshape(b, n, k, 1)

    def target(self, tokens: Tokens) -> Tensor:
        t = _spectral(tokens)
        if not self.norm_pix_loss:
            return t.values.float()
        mean, var = self._band_stats(t)
        b, n = t.values.shape[:2]
        v = t.values.float().reshape(b, n, -1, self.patch_size**2)
        return (((v - mean) / (var + 1e-6).sqrt()) * self._real(t)).reshape(b, n, -1)

    def loss(self, pred: Tensor, target: Tensor, tokens: Tokens) -> Tensor:
        """(B, N) per token: mean over pixels, then over the token's bands (equal weight per band).

        `pred` is what the MAE decoder head emits (R spectral features per pixel); the
        wavelength-conditioned head turns it into the bands that were fed."""
        t = _spectral(tokens)
        values = self._band_values(pred, t)
        b, n = values.shape[:2]
        diff = values - target
        error = diff.abs() if self.pixel_loss == "l1" else diff.square()
        per_band = error.reshape(b, n, -1, self.patch_size**2).mean(-1, keepdim=True)
        real = self._real(t)
        return ((per_band * real).sum((2, 3)) / real.sum((2, 3)).clamp(min=1)).float()

    def values_from_prediction(self, pred: Tensor, tokens: Tokens) -> Tensor:
        t = _spectral(tokens)
        values = self._band_values(pred, t)
        if not self.norm_pix_loss:
            return values
        b, n = values.shape[:2]
        mean, var = self._band_stats(t)
        v = values.reshape(b, n, -1, self.patch_size**2) * (var + 1e-6).sqrt() + mean
        return (v * self._real(t)).reshape(b, n, -1)

    def picture(self, native: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, H, W, 3): the bands nearest red, green and blue of the last batch."""
        idx = torch.tensor([min(i, native.shape[1] - 1) for i in self._display], device=native.device)
        return native[:, idx].permute(0, 2, 3, 1)


def _spectral(tokens: Tokens) -> SpectralTokens:
    if not isinstance(tokens, SpectralTokens):
        raise ConfigError("WavelengthAdapter works on the tokens its own `tokenize` made")
    return tokens
