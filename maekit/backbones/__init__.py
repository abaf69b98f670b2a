"""Domain-agnostic building blocks: position embeddings and transformer stacks."""

from maekit.backbones.posembed import LearnedPositionTable, sincos_embedding
from maekit.backbones.transformer import SIZES, SizeName, StackSize, TransformerStack

__all__ = ["SIZES", "LearnedPositionTable", "SizeName", "StackSize", "TransformerStack", "sincos_embedding"]
