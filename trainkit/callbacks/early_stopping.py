"""Stop fitting when a monitored metric stops improving, as Lightning's EarlyStopping.

Checked once per validation — at the end of the training epoch when validation runs once per
epoch (its metrics are in by then), else after each validation; `check_on_train_epoch_end`
decides when given. In order: a non-finite value stops (`check_finite`); reaching
`stopping_threshold` stops; passing `divergence_threshold` the wrong way stops; an improvement by
more than `min_delta` resets the patience; otherwise `patience` checks without one stop.
`strict=True` makes a metric that was not logged an error naming those that were.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")


class EarlyStopping(Callback):
    mode_dict = {"min": torch.lt, "max": torch.gt}
    order_dict = {"min": "<", "max": ">"}

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        if mode not in self.mode_dict:
            raise ConfigError(f"EarlyStopping(mode={mode!r}) must be 'min' or 'max'")
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.verbose = verbose
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._check_on_train_epoch_end = check_on_train_epoch_end
        # Signed as in Lightning: `current - min_delta` must beat the best.
        self.min_delta = abs(min_delta) if mode == "max" else -abs(min_delta)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf, dtype=torch.float64)
        self.stopping_reason_message: str | None = None
        self._checked_step = -1  # one check per step: a resumed epoch end that re-runs has nothing new

    @property
    def monitor_op(self):
        return self.mode_dict[self.mode]

    def setup(self, trainer, module, stage) -> None:
        if self._check_on_train_epoch_end is None:
            self._check_on_train_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._check_on_train_epoch_end and not self._skip(trainer):
            self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer, module) -> None:
        if not self._check_on_train_epoch_end and not self._skip(trainer):
            self._run_early_stopping_check(trainer)

    @staticmethod
    def _skip(trainer) -> bool:
        return trainer.state.stage != "fit"  # (also skips the sanity check)

    def _run_early_stopping_check(self, trainer) -> None:
        if trainer.global_step == self._checked_step:
            return
        self._checked_step = trainer.global_step
        logs = trainer.callback_metrics
        if self.monitor not in logs:
            message = (f"Early stopping conditioned on metric {self.monitor!r}, which is not available. Logged: "
                       f"{', '.join(sorted(logs)) or 'nothing'}; log it, or set EarlyStopping(monitor=) to one of those")
            if self.strict:
                raise ConfigError(message)
            if self.verbose:
                log.warning(message)
            return
        current = torch.as_tensor(logs[self.monitor], dtype=torch.float64).detach().cpu().squeeze()
        should_stop, reason = self._evaluate_stopping_criteria(current)
        # The metrics are reduced across ranks, so every rank reaches the same decision.
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
        if reason:
            self.stopping_reason_message = reason if should_stop else self.stopping_reason_message
            if self.verbose or should_stop:
                log.info(reason)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        op, sign = self.monitor_op, self.order_dict[self.mode]
        if self.check_finite and not torch.isfinite(current):
            return True, (f"Monitored metric {self.monitor} = {float(current)} is not finite. Previous best value "
                          f"was {float(self.best_score):.3f}. Signaling Trainer to stop.")
        if self.stopping_threshold is not None and op(current, torch.tensor(self.stopping_threshold, dtype=current.dtype)):
            return True, (f"Stopping threshold reached: {self.monitor} = {float(current)} {sign} "
                          f"{self.stopping_threshold}. Signaling Trainer to stop.")
        if self.divergence_threshold is not None and op(-current, torch.tensor(-self.divergence_threshold, dtype=current.dtype)):
            return True, (f"Divergence threshold reached: {self.monitor} = {float(current)} "
                          f"{self.order_dict['max' if self.mode == 'min' else 'min']} {self.divergence_threshold}. "
                          "Signaling Trainer to stop.")
        if op(current - self.min_delta, self.best_score):
            if torch.isfinite(self.best_score):
                message = (f"Metric {self.monitor} improved by {abs(float(self.best_score - current)):.3f} >= "
                           f"min_delta = {abs(self.min_delta)}. New best score: {float(current):.3f}")
            else:
                message = f"Metric {self.monitor} improved. New best score: {float(current):.3f}"
            self.best_score, self.wait_count = current, 0
            return False, message
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. "
                          f"Best score: {float(self.best_score):.3f}. Signaling Trainer to stop.")
        return False, None

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch, "best_score": self.best_score,
                "patience": self.patience, "checked_step": self._checked_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait_count = state["wait_count"]
        self.stopped_epoch = state["stopped_epoch"]
        self.best_score = state["best_score"]
        self.patience = state["patience"]
        self._checked_step = state["checked_step"]
