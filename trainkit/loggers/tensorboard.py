"""TensorBoard event files in the run directory (`tensorboard --logdir outputs/`)."""
from __future__ import annotations

from typing import Any


class TensorBoardLogger:
    def __init__(self, save_dir: str, flush_secs: int = 30) -> None:
        self.save_dir = save_dir
        self.flush_secs = flush_secs
        self._writer = None
        self._params: dict[str, Any] | None = None

    @property
    def writer(self):
        # Created on first use: importing tensorboard is slow and a run that never logs
        # should not pay for it.
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.save_dir, flush_secs=self.flush_secs)
        return self._writer

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        # Kept until the first metrics are written, so that start-up does not wait for the
        # tensorboard import.
        self._params = params

    def _write_params(self) -> None:
        import yaml

        self.writer.add_text("config", "```\n" + yaml.safe_dump(self._params, sort_keys=False) + "\n```")
        self._params = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._params is not None:
            self._write_params()
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)

    def finalize(self, status: str) -> None:
        if self._params is not None:
            self._write_params()
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
