"""Log each parameter group's learning rate (`lr-<Optimizer>`, `/pg<i>` when there are several)."""
from __future__ import annotations

from trainkit.engine.callback import Callback


class LearningRateMonitor(Callback):
    def __init__(self) -> None:
        self._last_step = -1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step or step % trainer.log_every_n_steps != 0:
            return
        self._last_step = step
        optimizer = trainer.optimizer
        name = f"lr-{type(optimizer).__name__}"
        groups = optimizer.param_groups
        if len(groups) == 1:
            trainer.log_metrics({name: float(groups[0]["lr"])})
        else:
            trainer.log_metrics({f"{name}/pg{i}": float(g["lr"]) for i, g in enumerate(groups)})
