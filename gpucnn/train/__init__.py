"""Training: the Trainer, callbacks, checkpoints, metrics and transfer learning."""

from gpucnn.train.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    OneCycleScheduler,
    PlateauScheduler,
)
from gpucnn.train.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from gpucnn.train.errors import (
    CheckpointError,
    NonFiniteLossError,
    NonFiniteParametersError,
    TrainingError,
)
from gpucnn.train.loggers import CSVLogger, TensorBoardLogger
from gpucnn.train.metrics import accuracy, confusion_matrix, per_class_accuracy, topk_accuracy
from gpucnn.train.trainer import Trainer
from gpucnn.train.transfer import freeze, load_weights, replace_head, unfreeze

__all__ = [
    "FORMAT_VERSION",
    "CSVLogger",
    "Callback",
    "Checkpoint",
    "CheckpointError",
    "EarlyStopping",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "NonFiniteParametersError",
    "OneCycleScheduler",
    "PlateauScheduler",
    "TensorBoardLogger",
    "Trainer",
    "TrainingError",
    "accuracy",
    "confusion_matrix",
    "freeze",
    "load_checkpoint",
    "load_weights",
    "per_class_accuracy",
    "replace_head",
    "save_checkpoint",
    "topk_accuracy",
    "unfreeze",
]
