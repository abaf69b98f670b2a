"""The shared pretraining engine: masking, the masked autoencoder, its Lightning module, figures."""

from maekit.pretrain.mae import MAEOutput, MaskedAutoencoder
from maekit.pretrain.masking import (BlockMasking, GroupDirichletMasking, GroupMasking, MaskGenerator, RandomMasking,
                                     SaliencyMasking, TubeMasking, Visible)
from maekit.pretrain.module import MAEPretrainModule
from maekit.pretrain.writers import VolumeReconstructionWriter

__all__ = [
    "BlockMasking", "GroupDirichletMasking", "GroupMasking", "MAEOutput", "MAEPretrainModule", "MaskGenerator",
    "MaskedAutoencoder", "RandomMasking", "SaliencyMasking", "TubeMasking", "Visible", "VolumeReconstructionWriter",
]
