"""The common currency of the kit: every domain turns its batches into `Tokens`.

The shared engine (masking, encoder, decoder, losses) only ever sees `Tokens` and the
`DomainAdapter` interface below, so it never imports a domain. What only some adapters can do
is declared as `Protocol`s (`PatchGridAdapter`-like grids, named channels, datamodule hooks,
point groups); the engine checks for them with `isinstance`, never by probing attribute names.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass
class Tokens:
    """A batch of tokens of one domain.

    Attributes:
        values: (B, N, P) raw content of each token (a patch's pixels, a point group's offsets...).
        coords: (B, N, K) where each token sits, in the domain's own units.
        group: (B, N) long, which band group / modality / body part a token belongs to.
        present: (B, N) bool, False where the data does not exist (nodata, missing modality...).
        grid: static shape of the token grid of one group, e.g. (rows, cols); lets an adapter
            put tokens back in place without reading tensors on the host.
        may_be_absent: static hint; False when the adapter knows every token is present, which
            lets the encoder skip its attention mask.
        saliency: optional (B, N) float, how much a token "moves" or matters (e.g. a joint's
            motion over its frames); saliency-aware maskers (`SaliencyMasking`) hide salient
            tokens more often. None when the adapter does not provide it.
    """

    values: Tensor
    coords: Tensor
    group: Tensor
    present: Tensor
    grid: tuple[int, ...] = ()
    may_be_absent: bool = True
    saliency: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.values.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.values.shape[1]

    def gather(self, index: Tensor) -> Tokens:
        """Tokens at `index` (B, K), in that order (used to pick the visible tokens)."""

        rows: Tensor | None = None

        def take(t: Tensor) -> Tensor:
            nonlocal rows
            if t.dim() > 2 and t.is_contiguous():  # whole rows: one index_select, several times a gather's speed
                if rows is None:
                    rows = (index + torch.arange(index.shape[0], device=index.device)[:, None] * t.shape[1]).reshape(-1)
                return t.reshape(-1, *t.shape[2:]).index_select(0, rows).view(*index.shape, *t.shape[2:])
            idx = index.view(*index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            return torch.gather(t, 1, idx)

        return replace(
            self,
            values=take(self.values),
            coords=take(self.coords),
            group=take(self.group),
            present=take(self.present),
            saliency=None if self.saliency is None else take(self.saliency),
        )


class DomainAdapter(nn.Module, ABC):
    """Everything domain-specific between a native batch and the shared engine.

    An adapter is built for an embedding width with `build(embed_dim)` (the engine calls it, so
    configs name the width once, on the backbone). The arguments it was constructed with are
    recorded in `init_args` automatically (see `__init_subclass__`), which is what `config()`
    writes into checkpoints and exported folders.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the subclass's `__init__` so that the outermost constructor call records its
        bound arguments (defaults filled in) as `init_args`."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: DomainAdapter, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self).__init__ is recording_init:  # the concrete class's own constructor
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded: dict[str, Any] = {}
                for i, (name, value) in enumerate(bound.arguments.items()):
                    kind = signature.parameters[name].kind
                    if i == 0:
                        continue  # self
                    if kind is inspect.Parameter.VAR_KEYWORD:
                        recorded.update(value)
                    elif kind is inspect.Parameter.VAR_POSITIONAL:
                        raise TypeError(f"{cls.__name__}.__init__ takes *{name}: adapters take named arguments")
                    else:
                        recorded[name] = value
                self.init_args = copy.deepcopy(recorded)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    #: number of distinct values of `Tokens.group` (band groups, modalities, body parts)
    num_groups: int
    #: P, the length of `Tokens.values` per token
    token_size: int

    @abstractmethod
    def build(self, embed_dim: int) -> None:
        """Create the embedding layers for width `embed_dim`."""

    @abstractmethod
    def tokenize(self, batch: dict[str, Any]) -> Tokens:
        """Turn a native batch into tokens."""

    @abstractmethod
    def untokenize(self, values: Tensor, tokens: Tokens) -> Tensor:
        """Put per-token `values` (B, N, P) back into the native layout of `tokens`."""

    @abstractmethod
    def embed(self, tokens: Tokens) -> Tensor:
        """(B, N, D) content + position + group embedding of every token."""

    def embed_parts(self, tokens: Tokens) -> tuple[Tensor, Tensor | None]:
        """Embeddings for the encoder: (content, None) when the position is part of `embed`
        (ViT/MAE), or (content, position) for adapters whose position is added before every
        block (Point-MAE); the engine passes the second to the encoder as `pos`."""
        return self.embed(tokens), None

    def embed_visible(self, tokens: Tokens, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """`embed_parts` of only the tokens at `index` (B, K): (B, K, D) each. This default
        embeds every token and gathers; adapters whose embedding is per token override it to
        embed the visible ones alone (the MAE encoder sees a quarter of the tokens)."""
        x, pos = self.embed_parts(tokens)
        take = index[..., None].expand(-1, -1, x.shape[-1])
        return torch.gather(x, 1, take), (torch.gather(pos, 1, take) if pos is not None else None)

    @abstractmethod
    def encode_position(self, coords: Tensor, dim: int) -> Tensor:
        """(B, N, dim) fixed position code of `coords`, used by decoders of any width."""

    @abstractmethod
    def target(self, tokens: Tokens) -> Tensor:
        """(B, N, P) what the decoder should predict for each token."""

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor, tokens: Tokens) -> Tensor:
        """(B, N) per-token loss, fp32."""

    @property
    def per_token_loss(self) -> bool:
        """Whether `target` and `loss` treat each token on its own (no token's score reads
        another token), so scoring a gathered subset of tokens (`Tokens.gather`) gives the
        gathered scores of all: the MAE's training step then scores the masked tokens alone.
        False, always safe, unless an adapter says so."""
        return False

    def head_loss(self, features: Tensor, head: nn.Linear, tokens: Tokens, index: Tensor,
                  weight: Tensor) -> Tensor | None:
        """sum over (B, M) of `weight` times the per-token loss of `head(features)` (features
        (B, M, D)) against the tokens at `index` (B, M), computed in one pass without the
        (B, M, P) predictions; rows of weight 0 are left out entirely. None when the adapter has
        no such path here (the MAE then applies the head and `loss`). Only asked of adapters
        with `per_token_loss`."""
        return None

    def values_from_prediction(self, pred: Tensor, tokens: Tokens) -> Tensor:
        """Map predictions back to token values (undo a per-token target normalisation, using
        the true tokens' statistics as the MAE paper does for its figures)."""
        return pred

    def picture(self, native: Tensor) -> Tensor:
        """(B, H, W, K) values of `native` laid out as a picture (bands to show, a slice of a
        volume...), unscaled; domains with pictures override this."""
        raise NotImplementedError(f"{type(self).__name__} has no picture form")

    def to_image(self, native: Tensor, reference: Tensor | None = None) -> Tensor:
        """(B, H, W, 3) in [0, 1] for figures: `picture`, stretched per image and channel to the
        2-98 % range of `reference` (default: itself)."""
        x = self.picture(native).float()
        ref = self.picture(reference).float() if reference is not None else x
        flat = ref.flatten(1, 2)  # (B, HW, K)
        lo = flat.quantile(0.02, dim=1)[:, None, None]
        hi = flat.quantile(0.98, dim=1)[:, None, None]
        x = ((x - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
        return x.expand(-1, -1, -1, 3) if x.shape[-1] == 1 else x[..., :3]

    def reconstruction_pictures(self, tokens: Tokens, shown: Tensor, predicted: Tensor
                                ) -> tuple[Tensor, Tensor, Tensor] | None:
        """(input, masked input, reconstruction) pictures (B, H, W, 3) in [0, 1] for domains that
        draw their own (point clouds); None uses `untokenize` + `to_image`. `shown` (B, N) marks
        visible tokens, `predicted` is `values_from_prediction` of the decoder's output."""
        return None

    def no_weight_decay(self) -> set[str]:
        """Names (relative to the adapter) of parameters that take no weight decay."""
        return set()

    #: the arguments the adapter was constructed with (recorded automatically), for exported configs
    init_args: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        """`class_path` + `init_args` that rebuild this adapter (Lightning CLI form), and the
        names of its channels under their kind (`bands`, `modalities`) when it has them."""
        out: dict[str, Any] = {"class_path": class_path(type(self)), "init_args": copy.deepcopy(self.init_args)}
        if isinstance(self, NamedChannels) and self.channels:
            out[f"{self.channel_kind}s"] = list(self.channels)
        return out


def class_path(cls: type) -> str:
    """The one spelling of a class in configs: its package's (`maekit.domains.volume.VolumeAdapter`)
    when the package re-exports it, its module's otherwise."""
    package = cls.__module__.rpartition(".")[0]
    if package and cls.__name__ in getattr(importlib.import_module(package), "__all__", ()):
        return f"{package}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------------- optional capabilities
@runtime_checkable
class NamedChannels(Protocol):
    """An adapter whose input channels have names (bands, modalities, per-point channels)."""

    channels: list[str]
    #: what a channel is called in configs and model cards: "band", "modality", "channel"
    channel_kind: str


@runtime_checkable
class GridAdapter(Protocol):
    """An adapter of patches on a regular 2D/3D grid: dense heads put tokens back in place."""

    patch_size: int
    spatial_dims: int

    def to_grid(self, values: Tensor, tokens: Tokens) -> Tensor:
        """(B, C, *grid) from per-token (B, N, C) values of one group's grid."""
        ...


@runtime_checkable
class ConnectsDatamodule(Protocol):
    """An adapter that reads settings from the datamodule it is trained with (e.g. which
    per-point channels the data delivers) before training starts."""

    def connect_datamodule(self, datamodule: Any) -> None:
        ...


@runtime_checkable
class PointGroups(Protocol):
    """An adapter of point groups: clouds need at least `min_points` points."""

    min_points: int


@runtime_checkable
class ScaledInput(Protocol):
    """An adapter that maps raw values to physical units (`x * scale + offset`) before normalising."""

    scale: Tensor
    offset: Tensor
