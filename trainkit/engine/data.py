"""The DataModule API: where a recipe's data comes from.

Subclass it and override what you need. The Trainer calls `prepare_data()` once (rank 0: download
or generate files), then `setup(stage)` with stage in {"fit", "validate", "test", "predict"}, then
asks for the loaders of that stage.
"""
from __future__ import annotations

from typing import Any


class DataModule:
    def prepare_data(self) -> None:
        """Download or generate files. Runs once per machine, before `setup`."""

    def setup(self, stage: str) -> None:
        """Build the datasets that `stage` needs."""

    def train_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no train_dataloader()")

    def val_dataloader(self) -> Any:
        return None

    def test_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no test_dataloader()")

    def predict_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no predict_dataloader()")
