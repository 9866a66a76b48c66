"""Loggers: where metric floats go. Only rank zero has loggers.

A logger is any object with
    log_metrics(metrics: dict[str, float], step: int) -> None   # metrics include "epoch"
    log_hyperparams(params: dict) -> None
    flush() -> None                                             # before a checkpoint is saved
    finalize(status: str) -> None                               # "success" or "failed"

The W&B and MLflow loggers import their packages (optional extras) only when a run first logs.
"""
from trainkit.loggers.csv import CSVLogger
from trainkit.loggers.mlflow import MLFlowLogger
from trainkit.loggers.tensorboard import TensorBoardLogger
from trainkit.loggers.wandb import WandbLogger

__all__ = ["CSVLogger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger"]
