"""mmengine glue: importing this registers the zoo's model wrappers, metrics, hooks and
optimizer constructors in mmengine's registries, so configs name them by type."""
from .checkpoint import (
    AtomicCheckpointHook,
    AtomicLocalBackend,
    checkpoint_weights,
    load_trusted_checkpoint,
    trust_checkpoints_under,
)
from .classifier import TimmClassifier
from .hooks import EpochSeedHook, NonFiniteLossHook, ProgressBarHook, ThroughputHook, TrainingCurvesHook
from .metrics import Accuracy
from .optim import AutocastOptimWrapper, TimmOptimWrapperConstructor
from . import seg_metric, segmentation  # noqa: F401,E402  (segmentor, heads, preprocessor, IoUMetric)

__all__ = [
    "Accuracy",
    "AtomicCheckpointHook",
    "AtomicLocalBackend",
    "AutocastOptimWrapper",
    "EpochSeedHook",
    "NonFiniteLossHook",
    "ProgressBarHook",
    "ThroughputHook",
    "TimmClassifier",
    "TimmOptimWrapperConstructor",
    "TrainingCurvesHook",
    "checkpoint_weights",
    "load_trusted_checkpoint",
    "trust_checkpoints_under",
]
