"""Log learning rates (and optionally momentum, weight decay) under Lightning's key names.

    lr-<OptimizerClass>              one optimizer, one parameter group
    lr-<OptimizerClass>/pg1, /pg2    several groups (or the group's "name" when it has one)
    lr-<OptimizerClass>-1            the second optimizer of the same class
    <name>                           a scheduler config's "name" replaces "lr-<OptimizerClass>"
    ...-momentum, ...-weight_decay   with log_momentum / log_weight_decay (Adam's betas[0] as momentum)

`logging_interval="step"` logs every `log_every_n_steps` optimizer steps (just before the step),
`"epoch"` at each epoch's start, None by each scheduler's own interval (optimizers without a scheduler: every logged step).
A step's values go into the row of the step that uses them, with that step's loss. They go to the
loggers only (not `callback_metrics`), as in Lightning.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError


class LearningRateMonitor(Callback):
    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ConfigError(f"LearningRateMonitor(logging_interval={logging_interval!r}) must be None, 'step' or "
                              "'epoch'")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}  # every value logged, by key (as Lightning keeps them)
        self._logged_step = -1

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        # The rates the step about to run uses, logged in its row (with its loss); once per step
        # even when manual optimization steps several optimizers.
        step = trainer.global_step + 1
        if self.logging_interval == "epoch" or step == self._logged_step or step % trainer.log_every_n_steps:
            return
        self._logged_step = step
        self._log(trainer, "step" if self.logging_interval is None else "any", step)

    def on_train_epoch_start(self, trainer, module) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any", trainer.global_step + 1)

    def _log(self, trainer, interval: str, step: int) -> None:
        stats = self.stats(trainer, interval)
        for key, value in stats.items():
            self.lrs.setdefault(key, []).append(value)
        if stats:
            trainer.log_metrics(stats, step=step)

    def stats(self, trainer, interval: str = "any") -> dict[str, float]:
        """The current values, for schedulers of `interval` ("step", "epoch", or "any") and for
        optimizers without a scheduler (unless only epoch-interval values are asked for)."""
        configs = list(trainer.lr_scheduler_configs)
        scheduled = [c.scheduler.optimizer for c in configs]
        plain = [opt for opt in trainer.optimizers if not any(opt is s for s in scheduled)]
        # Names are given in Lightning's order: scheduled optimizers first, then the others.
        entries = [(c.scheduler.optimizer, c.name, c.interval) for c in configs] + [(o, None, None) for o in plain]
        seen: Counter = Counter()
        stats: dict[str, float] = {}
        for optimizer, custom, sched_interval in entries:
            cls = type(optimizer)
            if custom is None:
                seen[cls] += 1
            base = custom or f"lr-{cls.__name__}"
            if custom is None and seen[cls] > 1:
                base += f"-{seen[cls] - 1}"
            wanted = interval == "any" or sched_interval == interval or (sched_interval is None and interval != "epoch")
            if not wanted:
                continue
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                name = group.get("name") or (f"pg{i + 1}" if len(groups) > 1 else None)
                key = f"{base}/{name}" if name else base
                stats[key] = float(group["lr"])
                if self.log_momentum:
                    momentum = group["betas"][0] if "betas" in optimizer.defaults else group.get("momentum", 0)
                    stats[f"{key}-momentum"] = float(momentum)
                if self.log_weight_decay and "weight_decay" in group:
                    stats[f"{key}-weight_decay"] = float(group["weight_decay"])
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"logged_step": self._logged_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._logged_step = state["logged_step"]
