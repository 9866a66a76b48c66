"""TensorBoard event files in the run directory (`tensorboard --logdir outputs/`).

Besides the scalars and the config (as text), each run ends with an HParams record in its own
event files: the run's hyperparameters (the scalar leaves of its model, datamodule, optimizer,
scheduler, trainer, precision and strategy config) against the final value of every metric it
logged. `tensorboard --logdir <sweep dir>` then shows one row per trial in the HPARAMS tab (table,
parallel coordinates, scatter plots).
"""
from __future__ import annotations

import math
from typing import Any

HPARAM_GROUPS = ("model", "datamodule", "optimizer", "scheduler", "trainer", "precision", "strategy")


class TensorBoardLogger:
    def __init__(self, save_dir: str, flush_secs: int = 30) -> None:
        self.save_dir = save_dir
        self.flush_secs = flush_secs
        self._writer = None
        self._params: dict[str, Any] | None = None
        self._hparams: dict[str, Any] = {}
        self._final: dict[str, float] = {}  # the latest value of each metric
        self._last_step = 0

    def _open(self, first_step: int) -> None:
        # Opened on first use: importing tensorboard is slow and a run that never logs should not
        # pay for it. `purge_step`: a resumed run drops what an earlier run logged from its first
        # step on, so the curves have no doubled tail.
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=self.save_dir, flush_secs=self.flush_secs, purge_step=first_step)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        # Kept until the first metrics are written, so that start-up does not wait for the
        # tensorboard import.
        # Several calls (the CLI's config, then the module's save_hyperparameters) add up.
        self._params = {**(self._params or {}), **params}
        self._hparams = {**self._hparams, **hparams_of(params)}

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
            if name != "epoch":
                self._final[name] = float(value)
        self._last_step = max(self._last_step, step)

    def _write_hparams(self) -> None:
        """The HParams plugin's experiment and session records; it reads each metric's value from
        the run's own scalars of the same name, so nothing is logged twice."""
        from torch.utils.tensorboard.summary import hparams

        final = {k: v for k, v in self._final.items() if math.isfinite(v)}
        if not self._hparams or not final:
            return
        experiment, session_start, session_end = hparams(self._hparams, final)
        writer = self._writer.file_writer
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary, self._last_step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def finalize(self, status: str) -> None:
        if self._writer is not None:
            self._write_hparams()  # once, at the end, with the final metrics
            self._writer.flush()
            self._writer.close()
            self._writer = None


def hparams_of(config: dict[str, Any]) -> dict[str, Any]:
    """`{"model.hidden_size": 64, "optimizer.lr": 0.003, ...}`: the scalar settings of a run."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not str(key).startswith("_"):
                    walk(f"{prefix}.{key}", value)
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        elif node is None:
            flat[prefix] = "null"
        else:  # lists: one readable value
            flat[prefix] = str(node)

    for group in HPARAM_GROUPS:
        node = config.get(group)
        if isinstance(node, dict):
            walk(group, node)
    return flat
