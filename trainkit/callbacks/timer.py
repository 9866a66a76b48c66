"""Track the time of each stage and stop training after a duration, as Lightning's Timer.

    Timer(duration="00:12:00:00")               # DD:HH:MM:SS; or {"hours": 12}; or a timedelta
    timer.time_elapsed("train"), timer.time_remaining("train"), timer.start_time("validate")

Training stops at the first step (`interval="step"`) or epoch end (`"epoch"`) after the duration
has passed, as if by early stopping (the checkpoint callbacks still save). The training time
elapsed so far is saved in checkpoints: a resumed run counts on from it. Under several processes
rank 0's clock decides, so every rank stops at the same step.
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from trainkit.engine.arguments import duration_seconds
from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")

STAGES = ("train", "sanity_check", "validate", "test", "predict")


class Timer(Callback):
    def __init__(self, duration: str | dict | datetime.timedelta | None = None, interval: str = "step",
                 verbose: bool = True) -> None:
        if interval not in ("step", "epoch"):
            raise ConfigError(f"Timer(interval={interval!r}) must be 'step' or 'epoch'")
        self._duration = duration_seconds(duration, "Timer(duration)")
        self._interval = interval
        self._verbose = verbose
        self._start_time: dict[str, float | None] = dict.fromkeys(STAGES)
        self._end_time: dict[str, float | None] = dict.fromkeys(STAGES)
        self._offset = 0.0  # training time of the run before it was resumed

    def start_time(self, stage: str = "train") -> float | None:
        return self._start_time[stage]

    def end_time(self, stage: str = "train") -> float | None:
        return self._end_time[stage]

    def time_elapsed(self, stage: str = "train") -> float:
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        return (time.monotonic() if end is None else end) - start + offset

    def time_remaining(self, stage: str = "train") -> float | None:
        return None if self._duration is None else self._duration - self.time_elapsed(stage)

    # -- clocks ---------------------------------------------------------------------------------
    def _start(self, stage: str) -> None:
        self._start_time[stage], self._end_time[stage] = time.monotonic(), None

    def _end(self, stage: str) -> None:
        self._end_time[stage] = time.monotonic()

    def on_train_start(self, trainer, module) -> None:
        self._start("train")

    def on_train_end(self, trainer, module) -> None:
        self._end("train")

    def on_validation_start(self, trainer, module) -> None:
        self._start("sanity_check" if trainer.state.stage == "sanity_check" else "validate")

    def on_validation_end(self, trainer, module) -> None:
        self._end("sanity_check" if trainer.state.stage == "sanity_check" else "validate")

    def on_test_start(self, trainer, module) -> None:
        self._start("test")

    def on_test_end(self, trainer, module) -> None:
        self._end("test")

    def on_predict_start(self, trainer, module) -> None:
        self._start("predict")

    def on_predict_end(self, trainer, module) -> None:
        self._end("predict")

    # -- stopping -------------------------------------------------------------------------------
    def on_fit_start(self, trainer, module) -> None:
        if self._duration is not None:  # a resumed run whose time is already spent stops at once
            self._check_time_remaining(trainer)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._interval == "step" and self._duration is not None:
            self._check_time_remaining(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._interval == "epoch" and self._duration is not None:
            self._check_time_remaining(trainer)

    def _check_time_remaining(self, trainer) -> None:
        should_stop = self.time_elapsed("train") >= self._duration
        if trainer.world_size > 1:  # rank 0's clock decides for all
            import torch

            flag = torch.tensor([1.0 if should_stop and trainer.is_global_zero else 0.0], device=trainer.strategy.root_device)
            should_stop = bool(trainer.strategy.all_reduce_sum(flag).item() > 0)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop and self._verbose:
            elapsed = datetime.timedelta(seconds=int(self.time_elapsed("train")))
            log.info("Time limit reached. Elapsed time is %s. Signaling Trainer to stop.", elapsed)

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in STAGES}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._offset = state.get("time_elapsed", {}).get("train", 0.0)
