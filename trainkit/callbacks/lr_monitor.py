"""Log each parameter group's learning rate (`lr-<Optimizer>`, `/pg<i>` when there are several).

Recorded just before the optimizer step that uses it, into the same row as that step's loss.
"""
from __future__ import annotations

from trainkit.engine.callback import Callback


class LearningRateMonitor(Callback):
    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if (trainer.global_step + 1) % trainer.log_every_n_steps != 0:
            return  # only steps that are logged
        name = f"lr-{type(optimizer).__name__}"
        groups = optimizer.param_groups
        values = {name: groups[0]["lr"]} if len(groups) == 1 else {f"{name}/pg{i}": g["lr"] for i, g in enumerate(groups)}
        for key, lr in values.items():
            trainer.metrics.log(key, float(lr), on_step=True, on_epoch=False)
