"""TensorBoard event files in the run directory (`tensorboard --logdir outputs/`)."""
from __future__ import annotations

from typing import Any


class TensorBoardLogger:
    def __init__(self, save_dir: str, flush_secs: int = 30) -> None:
        self.save_dir = save_dir
        self.flush_secs = flush_secs
        self._writer = None
        self._params: dict[str, Any] | None = None

    def _open(self, first_step: int) -> None:
        # Opened on first use: importing tensorboard is slow and a run that never logs should not
        # pay for it. `purge_step`: a resumed run drops what an earlier run logged from its first
        # step on, so the curves have no doubled tail.
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=self.save_dir, flush_secs=self.flush_secs, purge_step=first_step)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        # Kept until the first metrics are written, so that start-up does not wait for the
        # tensorboard import.
        self._params = params

    def _write_params(self, step: int) -> None:
        import yaml

        self._writer.add_text("config", "```\n" + yaml.safe_dump(self._params, sort_keys=False) + "\n```", step)
        self._params = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._writer is None:
            self._open(step)
        if self._params is not None:
            self._write_params(step)
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def finalize(self, status: str) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
