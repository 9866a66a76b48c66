"""Progress counters of a run: a plain dataclass the Trainer owns and callbacks read."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainState:
    global_step: int = 0  # optimizer steps taken (skipped fp16 steps included)
    epoch: int = 0  # current epoch, 0-based
    batch_idx: int = 0  # batches of the current epoch consumed so far
    stage: str = "fit"  # "fit", "validate", "test", "predict", or "sanity_check" (fit's check before training)
    should_stop: bool = False  # set by callbacks (early stopping) to end fit after this epoch
    # True from the end hooks of an epoch that ran to its end until the next epoch: a checkpoint
    # saved by one of them (the default ModelCheckpoint saves there) resumes without running them again.
    epoch_ending: bool = False
    fit_seconds: float = 0.0  # time fit has run (over resumes), kept up to date when max_time is set
