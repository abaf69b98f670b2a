"""The shared pretraining engine: masking, the masked autoencoder, its Lightning module, figures."""

from maekit.pretrain.mae import MAEOutput, MaskedAutoencoder
from maekit.pretrain.masking import BlockMasking, GroupDirichletMasking, MaskGenerator, RandomMasking, Visible
from maekit.pretrain.module import MAEPretrainModule
from maekit.pretrain.writers import VolumeReconstructionWriter

__all__ = [
    "BlockMasking", "GroupDirichletMasking", "MAEOutput", "MAEPretrainModule", "MaskGenerator",
    "MaskedAutoencoder", "RandomMasking", "Visible", "VolumeReconstructionWriter",
]
