"""mmengine glue: importing this registers the zoo's model wrappers, metrics, hooks and
optimizer constructors in mmengine's registries, so configs name them by type."""
from .checkpoint import load_trusted_checkpoint, trust_checkpoints_under
from .classifier import TimmClassifier
from .hooks import ProgressBarHook, TrainingCurvesHook
from .metrics import Accuracy
from .optim import TimmOptimWrapperConstructor

__all__ = [
    "Accuracy",
    "ProgressBarHook",
    "TimmClassifier",
    "TimmOptimWrapperConstructor",
    "TrainingCurvesHook",
    "load_trusted_checkpoint",
    "trust_checkpoints_under",
]
