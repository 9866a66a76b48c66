"""Progress: a live rich bar on a terminal; periodic plain log lines otherwise (SLURM, nohup, CI).
Both show the logged progress-bar metrics and, with the ThroughputMonitor (on by default), the
samples/s of the last logged window and the fit's ETA.

The bar is redrawn at most every `refresh_rate_s`; plain lines come every `plain_interval_s`
and at each validation and epoch end. Between redraws a training step costs one clock read.
"""
from __future__ import annotations

import logging
import math
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from trainkit.engine.callback import Callback

log = logging.getLogger("trainkit")


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


class ProgressBar(Callback):
    def __init__(self, refresh_rate_s: float = 0.1, plain_interval_s: float = 10.0) -> None:
        self.refresh_rate_s = refresh_rate_s
        self.plain_interval_s = plain_interval_s
        self._progress: Progress | None = None
        self._task = None
        self._next_draw = 0.0

    def setup(self, trainer, module, stage) -> None:
        self.enabled = trainer.is_global_zero
        self._throughput = trainer.throughput_monitor  # its rate and the fit's ETA join the metrics
        if self.enabled and Console().is_terminal and self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                auto_refresh=False,  # redrawn from the loop, at our rate: no extra thread
            )
            self._progress.start()

    def teardown(self, trainer, module, stage) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _epoch_label(self, trainer) -> str:
        total = f"/{trainer.max_epochs}" if trainer.max_epochs is not None and trainer.max_steps == -1 else ""
        return f"epoch {trainer.current_epoch + 1}{total}"

    def on_train_epoch_start(self, trainer, module) -> None:
        if not self.enabled:
            return
        self._epoch_started = time.monotonic()
        self._next_draw = self._epoch_started + (self.refresh_rate_s if self._progress else self.plain_interval_s)
        if self._progress is not None:
            total = None if math.isinf(trainer.num_training_batches) else trainer.num_training_batches
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(self._epoch_label(trainer), total=total, metrics="")
            self._progress.refresh()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next_draw:
            return
        metrics = _fmt(trainer.metrics.progress_bar_values())
        if self._throughput is not None and self._throughput.latest:
            metrics = f"{metrics} {self._throughput.progress_text()}".strip()
        if self._progress is not None:
            self._next_draw = now + self.refresh_rate_s
            self._progress.update(self._task, completed=batch_idx + 1, metrics=metrics)
            self._progress.refresh()
        else:
            self._next_draw = now + self.plain_interval_s
            rate = (batch_idx + 1) / max(now - self._epoch_started, 1e-9)
            total = "?" if math.isinf(trainer.num_training_batches) else trainer.num_training_batches  # (an IterableDataset)
            log.info("%s batch %d/%s step %d %s (%.1f batches/s)", self._epoch_label(trainer), batch_idx + 1,
                     total, trainer.global_step, metrics, rate)

    def on_train_epoch_end(self, trainer, module) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=trainer.state.batch_idx,
                                  metrics=_fmt(trainer.metrics.progress_bar_values()))
            self._progress.refresh()
        else:
            elapsed = time.monotonic() - self._epoch_started
            log.info("%s done: step %d, %.1fs %s", self._epoch_label(trainer), trainer.global_step, elapsed,
                     _fmt(trainer.metrics.progress_bar_values()))

    def on_validation_end(self, trainer, module) -> None:
        if not self.enabled or trainer.state.stage != "fit":
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        line = f"{self._epoch_label(trainer)} step {trainer.global_step} validation: {_fmt(values)}"
        if self._progress is not None:
            self._progress.console.print(line)
        else:
            log.info(line)
