"""mmengine glue: importing this registers the zoo's model wrappers, metrics, hooks and
optimizer constructors in mmengine's registries, so configs name them by type."""
from .checkpoint import AtomicCheckpointHook, AtomicLocalBackend, load_trusted_checkpoint, trust_checkpoints_under
from .classifier import TimmClassifier
from .hooks import EpochSeedHook, NonFiniteLossHook, ProgressBarHook, TrainingCurvesHook
from .metrics import Accuracy
from .optim import TimmOptimWrapperConstructor

__all__ = [
    "Accuracy",
    "AtomicCheckpointHook",
    "AtomicLocalBackend",
    "EpochSeedHook",
    "NonFiniteLossHook",
    "ProgressBarHook",
    "TimmClassifier",
    "TimmOptimWrapperConstructor",
    "TrainingCurvesHook",
    "load_trusted_checkpoint",
    "trust_checkpoints_under",
]
