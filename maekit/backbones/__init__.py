"""Domain-agnostic building blocks: position embeddings and transformer stacks."""

from maekit.backbones.posembed import LearnedPositionTable, sincos_embedding
from maekit.backbones.transformer import (
    DECODER_SIZES, SIZES, CrossAttention, HierarchicalDecoder, SizeName, StackSize, TransformerStack, decoder_size,
)

__all__ = ["DECODER_SIZES", "SIZES", "decoder_size", "CrossAttention", "HierarchicalDecoder", "LearnedPositionTable", "SizeName", "StackSize", "TransformerStack", "sincos_embedding"]
