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
                        levels: list[Tensor] | None = None, query_index: Tensor | None = None) -> Tensor:
        """(B, N, P) predictions for every position, visible or not, present or not; with
        `query_index` (B, M) the (B, M, P) predictions at those positions only (plain decoder)."""
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
            return self.decoder_pred(self.decoder(full, levels, visible.valid))
        if query_index is not None:
            return self.decoder_pred(self.decoder(full, query_index=query_index))
        return self.decoder_pred(self.decoder(full))

    def forward(self, batch: dict[str, Any], visible: Visible | None = None, scored_only: bool = False) -> MAEOutput:
        """Tokenize, mask, encode, decode and score one batch.

        `scored_only`: decode only what the loss needs where the batch allows it (the plain
        decoder, every sample with the same visible count): the decoder's last block, its
        prediction head and the loss run on the masked tokens alone. The loss and its gradients
        are those of the full pass; `pred` and `per_token` are then computed when first read."""
        tokens = self.adapter.tokenize(batch)
        if visible is None:
            visible = self.masking(tokens)
        latent, levels = self.forward_encoder(tokens, visible)
        if not (scored_only and visible.valid is None and not self.decoder_reads):
            pred32, per_token, loss = self._score(self.forward_decoder(latent, tokens, visible, levels), tokens, visible)
            return MAEOutput(loss=loss, per_token=per_token, pred=pred32, tokens=tokens, visible=visible)
        num, kept = visible.mask.shape[1], visible.index.shape[1]
        hidden = visible.mask.to(torch.uint8).argsort(dim=1, stable=True)[:, : num - kept]  # (B, N - K) not visible
        pred = self.forward_decoder(latent, tokens, visible, levels, query_index=hidden)
        _, _, loss = self._score(pred, tokens, visible, hidden)

        def full() -> tuple[Tensor, Tensor]:
            pred32, per_token, _ = self._score(self.forward_decoder(latent, tokens, visible, levels), tokens, visible)
            return pred32, per_token

        return MAEOutput(loss=loss, tokens=tokens, visible=visible, full=full)

    def _score(self, pred: Tensor, tokens: Tokens, visible: Visible,
               hidden: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(fp32 predictions, per-token loss, loss) of `pred`: (B, N, P) at every position, or
        (B, M, P) at the positions `hidden` (B, M) (the others, never scored, are given the
        target, so the adapter's per-token loss still sees the (B, N, P) layout it takes)."""
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred32 = pred.float()
            target = self.adapter.target(tokens)
            if hidden is not None:
                pred32 = target.scatter(1, hidden[..., None].expand(-1, -1, target.shape[-1]), pred32)
            per_token = self.adapter.loss(pred32, target, tokens)
            scored = tokens.present & ~visible.mask
            # never NaN: a batch with nothing masked scores 0 (and gives zero gradients), and
            # whatever the decoder says at unscored positions cannot leak in through 0 * NaN
            loss = torch.where(scored, per_token, 0.0).sum() / scored.sum().clamp(min=1)
        return pred32, per_token, loss
