"""Fine-tuning: heads and Lightning tasks that reuse a pretrained adapter + encoder."""

from maekit.finetune.heads import PooledClassifier, UpsamplingDecoder
from maekit.finetune.tasks import ClassificationTask, EncoderTask, SegmentationTask
from maekit.finetune.segmentation3d import UNETRDecoder, VolumeSegmentationTask
from maekit.finetune.writers import PredictionWriter

__all__ = ["ClassificationTask", "EncoderTask", "PooledClassifier", "PredictionWriter", "UNETRDecoder", "VolumeSegmentationTask", "SegmentationTask", "UpsamplingDecoder"]
