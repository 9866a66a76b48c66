"""Callbacks shipped with trainkit (each in its own module), under Lightning's names."""
from trainkit.callbacks.early_stopping import EarlyStopping
from trainkit.callbacks.lr_monitor import LearningRateMonitor
from trainkit.callbacks.model_checkpoint import ModelCheckpoint
from trainkit.callbacks.model_summary import ModelSummary, RichModelSummary
from trainkit.callbacks.progress import ProgressBar
from trainkit.callbacks.stochastic_weight_avg import StochasticWeightAveraging
from trainkit.callbacks.timer import Timer
from trainkit.callbacks.weight_averaging import EMAWeightAveraging, WeightAveraging
from trainkit.engine.callback import Callback

__all__ = [
    "Callback",
    "EMAWeightAveraging",
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "ProgressBar",
    "RichModelSummary",
    "StochasticWeightAveraging",
    "Timer",
    "WeightAveraging",
]
