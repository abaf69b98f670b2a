"""The masked autoencoder: encoder on visible tokens, light decoder over every position."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from maekit.backbones import SIZES, HierarchicalDecoder, SizeName, TransformerStack, decoder_size
from maekit.errors import ConfigError
from maekit.pretrain.masking import MaskGenerator, RandomMasking, Visible
from maekit.tokens import DomainAdapter, Tokens


class MAEOutput:
    """What one MAE pass produced, for the loss, metrics and figures.

    Attributes:
        loss: scalar, mean over masked present tokens.
        pred: (B, N, P) decoder predictions at every position (in target space), fp32.
        per_token: (B, N) loss of every token, fp32.
        tokens, visible: the tokens and the visible set of the pass.

    A pass that decoded only the scored tokens (`MaskedAutoencoder.forward(scored_only=True)`)
    computes `pred` and `per_token` the first time they are read, by decoding every position.
    """

    def __init__(self, loss: Tensor, tokens: Tokens, visible: Visible, pred: Tensor | None = None,
                 per_token: Tensor | None = None,
                 full: Callable[[], tuple[Tensor, Tensor]] | None = None) -> None:
        if (pred is None or per_token is None) and full is None:
            raise ValueError("MAEOutput needs pred and per_token, or `full` to compute them")
        self.loss, self.tokens, self.visible = loss, tokens, visible
        self._pred, self._per_token, self._full = pred, per_token, full

    def _complete(self) -> None:
        if self._pred is None or self._per_token is None:
            self._pred, self._per_token = self._full()  # type: ignore[misc]

    @property
    def pred(self) -> Tensor:
        self._complete()
        return self._pred  # type: ignore[return-value]

    @property
    def per_token(self) -> Tensor:
        self._complete()
        return self._per_token  # type: ignore[return-value]

    @property
    def scored(self) -> Tensor:
        """(B, N) bool: tokens the loss is taken on (masked and present)."""
        return self.tokens.present & ~self.visible.mask


class MaskedAutoencoder(nn.Module):
    """Domain adapter + transformer encoder + light decoder, as in He et al. (2022).

    Args:
        adapter: turns native batches into tokens and owns embeddings, targets and losses.
        size: encoder size by name (see `maekit.backbones.SIZES`).
        decoder_width, decoder_depth, decoder_heads: the decoder stack; each one not given
            follows the encoder size (`maekit.backbones.DECODER_SIZES`).
        masking: which tokens stay visible; default random at 0.75.
        drop_path: stochastic depth of the encoder.
        decoder_reads: encoder blocks (1-based) whose outputs every decoder layer also attends
            to, Hi-End-MAE style (e.g. [3, 6, 9, 12]); None is the plain MAE decoder.
        checkpoint_blocks: activation checkpointing of the encoder and decoder blocks (less
            memory in training for about one more forward pass of the blocks).
    """

    def __init__(
        self,
        adapter: DomainAdapter,
        size: SizeName = "tiny",
        decoder_width: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
        masking: MaskGenerator | None = None,
        drop_path: float = 0.0,
        decoder_reads: list[int] | None = None,
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        spec = SIZES[size]
        dec = decoder_size(size, decoder_width, decoder_depth, decoder_heads)
        decoder_width, decoder_depth, decoder_heads = dec.width, dec.depth, dec.heads
        self.decoder_spec = dec
        self.adapter = adapter
        adapter.build(spec.width)
        self.encoder = TransformerStack(spec.width, spec.depth, spec.heads, drop_path=drop_path,
                                        checkpoint_blocks=checkpoint_blocks)
        self.masking = masking if masking is not None else RandomMasking(0.75)
        self.decoder_embed = nn.Linear(spec.width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_group = nn.Embedding(adapter.num_groups, decoder_width)
        self.decoder_reads = sorted(set(decoder_reads)) if decoder_reads else []
        if any(not 1 <= b <= spec.depth for b in self.decoder_reads):
            raise ConfigError(f"decoder_reads {decoder_reads} must name encoder blocks 1..{spec.depth}")
        self.decoder: nn.Module = (
            HierarchicalDecoder(decoder_width, decoder_depth, decoder_heads, spec.width, len(self.decoder_reads),
                                checkpoint_blocks=checkpoint_blocks)
            if self.decoder_reads else TransformerStack(decoder_width, decoder_depth, decoder_heads,
                                                        checkpoint_blocks=checkpoint_blocks))
        self.decoder_pred = nn.Linear(decoder_width, adapter.token_size)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.decoder_group.weight, std=0.02)
        for layer in (self.decoder_embed, self.decoder_pred):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def compile_stacks(self, backend: str = "inductor") -> None:
        """Run the encoder and decoder stacks through `torch.compile` (what `compile: true` of the
        Lightning module does, and what `benchmarks/mae_step.py` times). Tokenizing, masking, the
        scatter into the decoder and the loss stay eager: the masks keep eager's random stream."""
        self.encoder = torch.compile(self.encoder, backend=backend)  # type: ignore[assignment]
        self.decoder = torch.compile(self.decoder, backend=backend)  # type: ignore[assignment]

    def no_weight_decay(self) -> set[str]:
        """Parameters that take no weight decay (besides biases and norms)."""
        names = {"mask_token", "decoder_group.weight"}
        names |= {f"encoder.{n}" for n in self.encoder.no_weight_decay()}
        return names | {f"adapter.{n}" for n in self.adapter.no_weight_decay()}

    def forward_encoder(self, tokens: Tokens, visible: Visible) -> tuple[Tensor, list[Tensor]]:
        """(B, K, D) encoding of the visible tokens, and the outputs of the `decoder_reads` blocks."""
        x, pos = self.adapter.embed_visible(tokens, visible.index)
        if not self.decoder_reads:
            return self.encoder(x, visible.valid, pos=pos), []
        return self.encoder(x, visible.valid, collect=tuple(self.decoder_reads), pos=pos)

    def forward_decoder(self, latent: Tensor, tokens: Tokens, visible: Visible,
                        levels: list[Tensor] | None = None, query_index: Tensor | None = None,
                        head: bool = True) -> Tensor:
        """(B, N, P) predictions for every position, visible or not, present or not; with
        `query_index` (B, M) the (B, M, P) predictions at those positions only (plain decoder).
        `head=False` returns the decoder's features (B, N or M, D_dec) before the prediction head."""
        batch, num = tokens.present.shape
        y = self.decoder_embed(latent)
        mask_token = self.mask_token.to(y.dtype)
        if visible.valid is not None:
            y = torch.where(visible.valid[..., None], y, mask_token)
        # out-of-place scatter into the broadcast mask token: one (B, N, D) copy, not two
        full = mask_token.expand(batch, num, -1).scatter(1, visible.index[..., None].expand(-1, -1, y.shape[-1]), y)
        position = self.adapter.encode_position(tokens.coords, full.shape[-1]).to(full.dtype)
        full = full + position + self.decoder_group(tokens.group).to(full.dtype)
        if self.decoder_reads:
            if query_index is not None:
                raise ValueError("query_index needs the plain decoder (no decoder_reads)")
            features = self.decoder(full, levels, visible.valid)
        elif query_index is not None:
            features = self.decoder(full, query_index=query_index)
        else:
            features = self.decoder(full)
        return self.decoder_pred(features) if head else features

    def forward(self, batch: dict[str, Any], visible: Visible | None = None, scored_only: bool = False) -> MAEOutput:
        """Tokenize, mask, encode, decode and score one batch.

        `scored_only`: decode only what the loss needs where the model allows it (the plain
        decoder): the decoder's last block, its prediction head and the loss run on the scored
        tokens alone (see `_decoded_alone`). The loss and its gradients
        are those of the full pass; `pred` and `per_token` are then computed when first read."""
        tokens = self.adapter.tokenize(batch)
        if visible is None:
            visible = self.masking(tokens)
        latent, levels = self.forward_encoder(tokens, visible)
        hidden = self._decoded_alone(tokens, visible) if scored_only and not self.decoder_reads else None
        if hidden is None:
            pred32, per_token, loss = self._score(self.forward_decoder(latent, tokens, visible, levels), tokens, visible)
            return MAEOutput(loss=loss, per_token=per_token, pred=pred32, tokens=tokens, visible=visible)
        features = self.forward_decoder(latent, tokens, visible, levels, query_index=hidden, head=False)
        loss = self._scored_loss(features, tokens, visible, hidden)

        def full() -> tuple[Tensor, Tensor]:
            pred32, per_token, _ = self._score(self.forward_decoder(latent, tokens, visible, levels), tokens, visible)
            return pred32, per_token

        return MAEOutput(loss=loss, tokens=tokens, visible=visible, full=full)

    @staticmethod
    def _decoded_alone(tokens: Tokens, visible: Visible) -> Tensor | None:
        """(B, M) the positions a scored-only pass decodes, or None when nothing is scored. With
        the same visible count in every sample: the M = N - K hidden ones. With padded visible
        sets (samples keep different counts: absent modalities, nodata): each sample's scored
        tokens (masked and present) first, padded to the largest count with unscored ones,
        which the loss leaves out."""
        if visible.valid is None:
            num, kept = visible.mask.shape[1], visible.index.shape[1]
            return visible.mask.to(torch.uint8).argsort(dim=1, stable=True)[:, : num - kept] if num > kept else None
        scored = tokens.present & ~visible.mask
        count = int(scored.sum(1).max())
        return (~scored).to(torch.uint8).argsort(dim=1, stable=True)[:, :count] if count else None

    def _score(self, pred: Tensor, tokens: Tokens, visible: Visible) -> tuple[Tensor, Tensor, Tensor]:
        """(fp32 predictions, per-token loss, loss) of `pred` (B, N, P) at every position."""
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred32 = pred.float()
            per_token = self.adapter.loss(pred32, self.adapter.target(tokens), tokens)
            scored = tokens.present & ~visible.mask
            # never NaN: a batch with nothing masked scores 0 (and gives zero gradients), and
            # whatever the decoder says at unscored positions cannot leak in through 0 * NaN
            loss = torch.where(scored, per_token, 0.0).sum() / scored.sum().clamp(min=1)
        return pred32, per_token, loss

    def _scored_loss(self, features: Tensor, tokens: Tokens, visible: Visible, hidden: Tensor) -> Tensor:
        """The loss of the decoder's features (B, M, D_dec) at the positions `hidden` (B, M): the
        same value as `_score` of a full pass. An adapter whose targets and losses are per token
        (`per_token_loss`) scores the gathered tokens alone (through `head_loss`, the head and
        loss in one pass, where it has one); for the others the predictions are laid into the
        (B, N, P) layout the adapter takes."""
        scored = tokens.present & ~visible.mask
        count = scored.sum().clamp(min=1)
        if self.adapter.per_token_loss:
            weight = torch.gather(scored, 1, hidden)
            loss = self.adapter.head_loss(features, self.decoder_pred, tokens, hidden, weight / count)
            if loss is not None:
                return loss
            picked = tokens.gather(hidden)
            pred = self.decoder_pred(features)
            with torch.autocast(device_type=pred.device.type, enabled=False):
                per_token = self.adapter.loss(pred.float(), self.adapter.target(picked), picked)
        else:
            pred = self.decoder_pred(features)
            with torch.autocast(device_type=pred.device.type, enabled=False):
                pred32 = pred.float()
                # unscored positions predict 0 (a finite value the loss leaves out); the head's
                # width may differ from the target's (a wavelength-conditioned head)
                filled = pred32.new_zeros(*scored.shape, pred32.shape[-1]).scatter(
                    1, hidden[..., None].expand(-1, -1, pred32.shape[-1]), pred32)
                per_token, weight = self.adapter.loss(filled, self.adapter.target(tokens), tokens), scored
        return torch.where(weight, per_token.float(), 0.0).sum() / count
