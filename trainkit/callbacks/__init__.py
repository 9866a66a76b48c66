"""Callbacks shipped with trainkit (each in its own module)."""
from trainkit.callbacks.early_stopping import EarlyStopping
from trainkit.callbacks.lr_monitor import LearningRateMonitor
from trainkit.callbacks.model_checkpoint import ModelCheckpoint
from trainkit.callbacks.progress import ProgressBar

__all__ = ["EarlyStopping", "LearningRateMonitor", "ModelCheckpoint", "ProgressBar"]
