"""Domain-agnostic building blocks: position embeddings and transformer stacks."""

from maekit.backbones.posembed import LearnedPositionTable, sincos_embedding
from maekit.backbones.transformer import (
    SIZES, CrossAttention, HierarchicalDecoder, SizeName, StackSize, TransformerStack,
)

__all__ = ["SIZES", "CrossAttention", "HierarchicalDecoder", "LearnedPositionTable", "SizeName", "StackSize", "TransformerStack", "sincos_embedding"]
