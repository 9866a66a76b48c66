"""Stop fitting when a monitored validation metric stops improving."""
from __future__ import annotations

import logging
import math
from typing import Any

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")


class EarlyStopping(Callback):
    def __init__(self, monitor: str = "val/loss", mode: str = "min", patience: int = 3, min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"callbacks.early_stopping.mode={mode!r} must be 'min' or 'max'")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, abs(min_delta)
        self.best: float | None = None
        self.wait = 0

    def on_validation_end(self, trainer, module) -> None:
        if trainer.state.stage != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigError(
                f"early stopping monitors {self.monitor!r}, which was not logged; logged: "
                f"{', '.join(sorted(trainer.callback_metrics)) or 'nothing'}"
            )
        if not math.isfinite(value):
            trainer.should_stop = True
            log.warning("early stopping: %s is %s at step %d; stopping", self.monitor, value, trainer.global_step)
            return
        improved = self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )
        if improved:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.should_stop = True
            log.info("early stopping: %s has not improved on %.6g for %d validations", self.monitor, self.best, self.wait)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]
