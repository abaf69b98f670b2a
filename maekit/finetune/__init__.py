"""Fine-tuning: heads and Lightning tasks that reuse a pretrained adapter + encoder."""

from maekit.finetune.frozen import FrozenFeatureEvaluation
from maekit.finetune.heads import PooledClassifier, UpsamplingDecoder
from maekit.finetune.pointcloud import PointCloudClassificationTask
from maekit.finetune.segmentation3d import UNETRDecoder, VolumeSegmentationTask
from maekit.finetune.tasks import ClassificationTask, EncoderTask, SegmentationTask
from maekit.finetune.writers import PredictionWriter

__all__ = ["ClassificationTask", "EncoderTask", "FrozenFeatureEvaluation", "PointCloudClassificationTask",
           "PooledClassifier", "PredictionWriter", "SegmentationTask", "UNETRDecoder", "UpsamplingDecoder",
           "VolumeSegmentationTask"]
