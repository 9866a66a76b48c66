"""Loggers: where metric floats go. Only rank zero has loggers.

A logger is any object with
    log_metrics(metrics: dict[str, float], step: int) -> None   # metrics include "epoch"
    log_hyperparams(params: dict) -> None
    flush() -> None                                             # before a checkpoint is saved
    finalize(status: str) -> None                               # "success" or "failed"
"""
from trainkit.loggers.csv import CSVLogger
from trainkit.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "TensorBoardLogger"]
