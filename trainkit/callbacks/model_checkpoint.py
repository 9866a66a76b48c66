"""When to save and what to keep; `trainkit.checkpoint` does the writing.

Saves a complete checkpoint (model, optimizer, scheduler, scaler, callbacks, counters, data
position, RNG) every `every_n_train_steps` optimizer steps, at the end of every `every_n_epochs`
epochs, and — when `monitor` is set — after each validation, keeping the best `save_top_k` by that
metric. The newest checkpoint is always kept and `checkpoints/last` points at it. Old ones are
deleted only after a new one is published.

Names: `epoch=<E>-step=<N>`, with `-<metric>=<value>` for monitored saves.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")


class ModelCheckpoint(Callback):
    def __init__(
        self,
        dirpath: str,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        every_n_epochs: int | None = 1,
        every_n_train_steps: int | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"callbacks.model_checkpoint.mode={mode!r} must be 'min' or 'max'")
        if save_top_k < 0:
            raise ConfigError(f"callbacks.model_checkpoint.save_top_k={save_top_k} must be >= 0")
        self.dirpath = dirpath
        self.monitor, self.mode, self.save_top_k = monitor, mode, save_top_k
        self.every_n_epochs, self.every_n_train_steps = every_n_epochs, every_n_train_steps
        # (step, path, monitored value or None) of every checkpoint this callback keeps.
        self.saved: list[tuple[int, str, float | None]] = []
        self._last_saved_step = -1

    @property
    def best_model_path(self) -> str | None:
        scored = self._best()
        return scored[0][1] if scored else None

    # -- when ------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0:
            self.save(trainer)

    def on_validation_end(self, trainer, module) -> None:
        if self.monitor is None or trainer.state.stage != "fit":
            return
        if self.monitor not in trainer.callback_metrics:
            raise ConfigError(
                f"checkpoint monitor {self.monitor!r} was not logged; logged: "
                f"{', '.join(sorted(trainer.callback_metrics)) or 'nothing'}"
            )
        self.save(trainer, score=trainer.callback_metrics[self.monitor])

    # -- how -------------------------------------------------------------------------------------
    def save(self, trainer, score: float | None = None) -> str | None:
        """Save at the current step unless this step is saved already; then apply retention."""
        if trainer.global_step == self._last_saved_step or trainer.global_step == 0 or trainer.fast_dev_run:
            return None  # (fast_dev_run saves nothing, as in Lightning)
        name = f"epoch={trainer.current_epoch}-step={trainer.global_step}"
        if score is not None:
            name += f"-{self.monitor.replace('/', '_')}={score:.4f}"
        self._last_saved_step = trainer.global_step  # part of the saved state: a resumed run does not save it twice
        self.saved.append((trainer.global_step, os.path.join(self.dirpath, name), score))
        path = trainer.save_checkpoint(name)
        log.debug("saved checkpoint %s", path)
        if trainer.is_global_zero:
            self._retain()
        return path

    def _best(self) -> list[tuple[int, str, float | None]]:
        scored = [s for s in self.saved if s[2] is not None]
        bad = math.inf if self.mode == "min" else -math.inf
        return sorted(scored, key=lambda s: s[2] if math.isfinite(s[2]) else bad, reverse=self.mode == "max")

    def _retain(self) -> None:
        from trainkit import checkpoint

        newest = max(self.saved, key=lambda s: s[0])
        keep = {newest[1]} | {path for _, path, _ in self._best()[: self.save_top_k]}
        for entry in [s for s in self.saved if s[1] not in keep]:
            self.saved.remove(entry)
            if os.path.isdir(entry[1]):
                checkpoint.remove(entry[1])

    def state_dict(self) -> dict[str, Any]:
        return {"saved": [list(s) for s in self.saved], "last_saved_step": self._last_saved_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = [tuple(s) for s in state["saved"]]
        self._last_saved_step = state["last_saved_step"]
