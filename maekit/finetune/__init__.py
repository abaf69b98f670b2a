"""Fine-tuning: heads and Lightning tasks that reuse a pretrained adapter + encoder."""

from maekit.finetune.frozen import FrozenFeatureEvaluation
from maekit.finetune.heads import PooledClassifier, UpsamplingDecoder
from maekit.finetune.segmentation3d import UNETRDecoder, VolumeSegmentationTask
from maekit.finetune.tasks import ClassificationTask, EncoderTask, SegmentationTask
from maekit.finetune.writers import PredictionWriter
from maekit.lazy import lazy_exports

# the point-cloud task lives with its domain; its old path is kept
__getattr__ = lazy_exports(__name__, {"PointCloudClassificationTask": "maekit.domains.pointcloud.task"})

__all__ = ["ClassificationTask", "EncoderTask", "FrozenFeatureEvaluation", "PointCloudClassificationTask",
           "PooledClassifier", "PredictionWriter", "SegmentationTask", "UNETRDecoder", "UpsamplingDecoder",
           "VolumeSegmentationTask"]
