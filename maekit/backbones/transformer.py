"""Transformer stacks for encoders and decoders, built from timm's `Block` (fused SDPA)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import functools

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class StackSize:
    """Width, depth and heads of a transformer stack."""

    width: int
    depth: int
    heads: int


#: Named encoder sizes (ViT conventions); `nano` and `micro` are for tests and CPU demos.
SIZES: dict[str, StackSize] = {
    "nano": StackSize(64, 2, 2),
    "micro": StackSize(128, 4, 4),
    "tiny": StackSize(192, 12, 3),
    "small": StackSize(384, 12, 6),
    "base": StackSize(768, 12, 12),
    "large": StackSize(1024, 24, 16),
    "huge": StackSize(1280, 32, 16),
}
SizeName = Literal["nano", "micro", "tiny", "small", "base", "large", "huge"]

#: The MAE decoder that goes with each encoder size unless one is given: MAE's 512 x 8 (16 heads)
#: from `base` up; Point-MAE's 384 x 4 for `small`; lighter ones below (`micro` is `make demo`'s
#: 128 x 2, `tiny` the kit's long-standing default 128 x 4).
DECODER_SIZES: dict[str, StackSize] = {
    "nano": StackSize(64, 1, 2),
    "micro": StackSize(128, 2, 4),
    "tiny": StackSize(128, 4, 4),
    "small": StackSize(384, 4, 6),
    "base": StackSize(512, 8, 16),
    "large": StackSize(512, 8, 16),
    "huge": StackSize(512, 8, 16),
}


def decoder_size(size: str, width: int | None = None, depth: int | None = None, heads: int | None = None) -> StackSize:
    """The decoder for encoder `size`: each of width/depth/heads as given, else from `DECODER_SIZES`."""
    d = DECODER_SIZES[size]
    return StackSize(d.width if width is None else width, d.depth if depth is None else depth,
                     d.heads if heads is None else heads)


class TransformerStack(nn.Module):
    """Pre-norm transformer blocks with a final LayerNorm (eps `norm_eps`: 1e-6 as ViT/MAE; MONAI
    and Prithvi checkpoints were trained with PyTorch's default 1e-5).

    `valid` (B, N) bool marks tokens that may be attended to; None means all of them (and keeps
    attention on the fastest fused kernel). With `class_token`, a learned token (with its own
    position) is prepended inside; outputs leave it out unless `return_prefix`. `pos` (B, N, D),
    when given, is added before every block (Point-MAE); the class token's position then joins it.
    `query_index` (B, M), when given, asks for the outputs at those tokens only: the last block
    then runs its queries, projections and MLP on them alone (keys and values still come from
    every token), which is all an MAE loss on the masked tokens needs.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
        class_token: bool = False,
        norm_eps: float = 1e-6,
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        self.width, self.depth, self.heads = width, depth, heads
        self.checkpoint_blocks = checkpoint_blocks
        self.mlp_ratio, self.drop_path, self.qkv_bias, self.norm_eps = mlp_ratio, drop_path, qkv_bias, norm_eps
        norm = functools.partial(nn.LayerNorm, eps=norm_eps)
        self.num_prefix = int(class_token)
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
            self.cls_pos = nn.Parameter(torch.zeros(1, 1, width))
            nn.init.normal_(self.cls_token, std=0.02)
        rates = torch.linspace(0, drop_path, depth).tolist() if depth > 0 else []
        self.blocks = nn.ModuleList(
            QueryBlock(width, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rate, norm_layer=norm)
            for rate in rates
        )
        self.norm = norm(width)
        self.apply(_init_weights)

    def no_weight_decay(self) -> set[str]:
        """Names of the stack's parameters that take no weight decay: the class token and its
        position (besides biases and norms, which every optimiser group leaves undecayed)."""
        return {"cls_token", "cls_pos"} if self.num_prefix else set()

    @classmethod
    def from_size(cls, size: SizeName, **kwargs: float) -> TransformerStack:
        s = SIZES[size]
        return cls(s.width, s.depth, s.heads, **kwargs)  # type: ignore[arg-type]

    def forward(
        self, x: Tensor, valid: Tensor | None = None, collect: Sequence[int] = (), return_prefix: bool = False,
        pos: Tensor | None = None, query_index: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Run the blocks; with `collect` (1-based block numbers) also return those outputs; with
        `query_index` (B, M) only the (B, M, D) outputs at those tokens."""
        p = self.num_prefix
        if query_index is not None and (return_prefix or collect or not self.blocks):
            raise ValueError("query_index takes no return_prefix or collect, and needs at least one block")
        if p:
            if pos is None:
                cls = (self.cls_token + self.cls_pos).to(x.dtype).expand(x.shape[0], -1, -1)
            else:
                cls = self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
                pos = torch.cat([self.cls_pos.to(pos.dtype).expand(pos.shape[0], -1, -1), pos], 1)
            x = torch.cat([cls, x], 1)
            if valid is not None:
                valid = torch.cat([valid.new_ones(valid.shape[0], p), valid], 1)
        mask = None
        if valid is not None:
            # a sample with no valid token attends to all (its outputs are discarded anyway),
            # so attention never sees an all-masked row and never returns NaN
            mask = (valid | ~valid.any(1, keepdim=True))[:, None, None, :]
        taken: list[Tensor] = []
        recompute = _recomputes(self)
        for i, block in enumerate(self.blocks, start=1):
            inputs = x if pos is None else x + pos
            if query_index is not None and i == len(self.blocks):
                index = query_index + p if p else query_index
                # through the block's own call, so wrappers (FSDP's unsharding) see it
                if recompute:
                    x = checkpoint(block, inputs, attn_mask=mask, query_index=index, use_reentrant=False)
                else:
                    x = block(inputs, attn_mask=mask, query_index=index)
                return self.norm(x)
            if recompute:
                x = checkpoint(block, inputs, attn_mask=mask, use_reentrant=False)
            else:
                x = block(inputs, attn_mask=mask)
            if i in collect:
                taken.append(x[:, p:])
        x = self.norm(x)
        if not return_prefix:
            x = x[:, p:]
        return (x, taken) if collect else x


class QueryBlock(Block):
    """timm's `Block` (same parameters and state-dict keys) that can also return its outputs at
    some tokens only: `block(x, attn_mask, query_index=index)` is `block(x, attn_mask)` gathered
    at `index` (B, M), computed for those queries alone (see `_block_at`)."""

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
                query_index: Tensor | None = None) -> Tensor:
        if query_index is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if is_causal:
            raise ValueError("query_index takes no is_causal")
        return _block_at(self, x, query_index, attn_mask)


def _block_at(block: nn.Module, x: Tensor, index: Tensor, attn_mask: Tensor | None) -> Tensor:
    """timm `Block`'s output at the tokens `index` (B, M) only, (B, M, D): the same arithmetic as
    `block(x)` followed by a gather, with queries, attention output, projection and MLP computed
    for those tokens alone (keys and values from all of `x`)."""
    take = index[..., None].expand(-1, -1, x.shape[-1])
    attn = block.attn
    if getattr(attn, "gate", None) is not None or not getattr(attn, "fused_attn", False):
        return torch.gather(Block.forward(block, x, attn_mask=attn_mask), 1, take)  # a variant this does not mirror
    b, n, _ = x.shape
    m, heads, head_dim = index.shape[1], attn.num_heads, attn.head_dim
    width = heads * head_dim
    xn = block.norm1(x)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = nn.functional.linear(torch.gather(xn, 1, take), weight[:width], None if bias is None else bias[:width])
    kv = nn.functional.linear(xn, weight[width:], None if bias is None else bias[width:])
    q = q.reshape(b, m, heads, head_dim).transpose(1, 2)
    k, v = kv.reshape(b, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(b, m, width))))
    y = torch.gather(x, 1, take) + block.drop_path1(block.ls1(out))
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))


def _recomputes(module: nn.Module) -> bool:
    """Whether `module`'s blocks run checkpointed now: asked for, training, and building a graph."""
    return bool(getattr(module, "checkpoint_blocks", False)) and module.training and torch.is_grad_enabled()


def _init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class CrossAttention(nn.Module):
    """Pre-norm multi-head attention from `x` (queries) to a `memory` of other tokens, residual.

    `memory_valid` (B, M) bool marks the memory tokens that may be attended to.
    """

    def __init__(self, width: int, heads: int, memory_width: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.memory_norm = nn.LayerNorm(memory_width or width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(memory_width or width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, memory: Tensor, memory_valid: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(self.norm(x)).reshape(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(self.memory_norm(memory)).reshape(b, memory.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None
        if memory_valid is not None:
            mask = (memory_valid | ~memory_valid.any(1, keepdim=True))[:, None, None, :]
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, d))


class HierarchicalDecoder(nn.Module):
    """A decoder whose layers also read encoder features of several depths (Hi-End-MAE's
    encoder-driven hierarchical decoding): layer j cross-attends to level `j % levels`, deepest
    level first, then runs a self-attention block. `checkpoint_blocks` as in `TransformerStack`
    (each cross-attention + block pair is one checkpointed unit).
    """

    def __init__(self, width: int, depth: int, heads: int, memory_width: int, levels: int,
                 checkpoint_blocks: bool = False) -> None:
        super().__init__()
        self.levels = levels
        self.checkpoint_blocks = checkpoint_blocks
        self.cross = nn.ModuleList(CrossAttention(width, heads, memory_width) for _ in range(depth))
        self.blocks = nn.ModuleList(Block(width, heads, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.apply(_init_weights)

    def forward(self, x: Tensor, memories: Sequence[Tensor], memory_valid: Tensor | None = None) -> Tensor:
        """`memories`: encoder features (B, K, D_enc) from shallow to deep."""
        recompute = _recomputes(self)
        for j, (cross, block) in enumerate(zip(self.cross, self.blocks)):
            memory = memories[len(memories) - 1 - (j % len(memories))]
            if recompute:
                x = checkpoint(_cross_then_block, cross, block, x, memory, memory_valid, use_reentrant=False)
            else:
                x = _cross_then_block(cross, block, x, memory, memory_valid)
        return self.norm(x)


def _cross_then_block(cross: CrossAttention, block: nn.Module, x: Tensor, memory: Tensor,
                      memory_valid: Tensor | None) -> Tensor:
    """One hierarchical decoder layer: cross-attention to `memory`, then self-attention."""
    return block(cross(x, memory, memory_valid))
