"""Training domain: strategy files, indicators, fuzzy features, labels, the MLP and its training loop.

Plain synchronous Python with no transport in it; the trainer actor calls `train_strategy` in a worker
thread. Public entry points are re-exported here.
"""

from ktrdr.training.progress import ProgressUpdate, TrainingProgressBridge, format_training_line
from ktrdr.training.registry import list_models, show_model
from ktrdr.training.strategy import Strategy, list_strategies, load_strategy, parse_strategy
from ktrdr.training.trainer import TrainingOperationContext, train_strategy

__all__ = [
    "ProgressUpdate",
    "Strategy",
    "TrainingOperationContext",
    "TrainingProgressBridge",
    "format_training_line",
    "list_models",
    "list_strategies",
    "load_strategy",
    "parse_strategy",
    "show_model",
    "train_strategy",
]
