"""What `configure_optimizers` returns, read into one shape; scheduler updates; and the handle
through which manual optimization steps an optimizer.

The forms of Lightning 2.x are accepted: an optimizer; a list or tuple of optimizers;
`([optimizers], [schedulers])`; a dict `{"optimizer": opt, "lr_scheduler": ..., "monitor": ...}`;
a list or tuple of such dicts; None (no optimizer: the steps run and update nothing). A scheduler
is given bare or as a config dict whose keys default as in Lightning:

    {"scheduler": sched, "interval": "epoch", "frequency": 1, "monitor": None, "strict": True, "name": None}

`interval="step"` steps after every optimizer step whose batch index in the epoch (from 1) is a
multiple of `frequency`; `"epoch"` after every `frequency`-th epoch that ran to its end. A
ReduceLROnPlateau steps with the value of `monitor` from `trainer.callback_metrics`, after the
validation of that step or epoch.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from trainkit.errors import ConfigError, UserError

log = logging.getLogger("trainkit")

ACCEPTED = ("an optimizer, a list or tuple of optimizers, ([optimizers], [schedulers]), "
            "{'optimizer': opt, 'lr_scheduler': sched}, a list of such dicts, or None")


@dataclass
class SchedulerConfig:
    """One scheduler and when to step it (Lightning's `LRSchedulerConfig`)."""

    scheduler: Any
    name: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: str | None = None
    strict: bool = True


_CONFIG_KEYS = {f.name for f in fields(SchedulerConfig)}


def parse(returned: Any, automatic: bool, owner: str) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    """The optimizers and scheduler configs of `owner.configure_optimizers()`'s return value."""
    where = f"{owner}.configure_optimizers()"
    if returned is None:
        log.warning("%s returned None: fit runs the training steps without an optimizer", where)
        return [], []
    optimizers, schedulers = _split(returned, where)
    configs = [_config(sched, monitor, automatic, where) for sched, monitor in schedulers]
    if automatic and len(optimizers) > 1:
        raise ConfigError(
            f"{where} returned {len(optimizers)} optimizers: several optimizers need manual optimization (as in "
            "Lightning 2.x). Set `self.automatic_optimization = False` in __init__, then step them in training_step "
            "with `opt1, opt2 = self.optimizers()` and `self.manual_backward(loss)`")
    for config in configs:
        attached = getattr(config.scheduler, "optimizer", None)
        if attached is not None and not any(attached is opt for opt in optimizers):
            raise ConfigError(f"{where}: the scheduler {type(config.scheduler).__name__} belongs to an optimizer "
                              "that configure_optimizers did not return; return that optimizer too")
    return optimizers, configs


def _split(returned: Any, where: str) -> tuple[list[Optimizer], list[tuple[Any, str | None]]]:
    if isinstance(returned, Optimizer):
        return [returned], []
    if isinstance(returned, dict):
        return _from_dict(returned, where)
    if isinstance(returned, (list, tuple)):
        if (len(returned) == 2 and isinstance(returned[0], (list, tuple))
                and all(isinstance(opt, Optimizer) for opt in returned[0])):
            scheds = returned[1] if isinstance(returned[1], (list, tuple)) else [returned[1]]
            return list(returned[0]), [(sched, None) for sched in scheds]
        if returned and all(isinstance(item, dict) for item in returned):
            optimizers, schedulers = [], []
            for item in returned:
                opts, scheds = _from_dict(item, where)
                optimizers += opts
                schedulers += scheds
            return optimizers, schedulers
        if all(isinstance(opt, Optimizer) for opt in returned):
            return list(returned), []
    raise ConfigError(f"{where} returned {_show(returned)}; it must return {ACCEPTED}")


def _from_dict(returned: dict, where: str) -> tuple[list[Optimizer], list[tuple[Any, str | None]]]:
    if not isinstance(returned.get("optimizer"), Optimizer):
        raise ConfigError(f"{where} returned {_show(returned)}; it must return {ACCEPTED}")
    extra = returned.keys() - {"optimizer", "lr_scheduler", "monitor"}
    if extra:
        log.warning("%s: ignoring unknown keys %s in the optimizer dict", where, sorted(extra))
    sched = returned.get("lr_scheduler")
    return [returned["optimizer"]], ([] if sched is None else [(sched, returned.get("monitor"))])


def _show(returned: Any) -> str:
    if isinstance(returned, dict) and not isinstance(returned.get("optimizer"), Optimizer):
        return f"a dict without an 'optimizer' (keys: {sorted(map(str, returned))})"
    text = repr(returned)
    return text if len(text) <= 120 else text[:117] + "..."


def _config(sched: Any, monitor: str | None, automatic: bool, where: str) -> SchedulerConfig:
    if isinstance(sched, dict):
        if "scheduler" not in sched:
            raise ConfigError(f"{where}: a scheduler config dict needs the key 'scheduler' (the scheduler itself); "
                              f"it has {sorted(map(str, sched))}")
        extra = sched.keys() - _CONFIG_KEYS
        if extra:
            log.warning("%s: ignoring unknown keys %s in the scheduler config (known: %s)", where, sorted(extra),
                        sorted(_CONFIG_KEYS))
        config = SchedulerConfig(**{k: v for k, v in sched.items() if k in _CONFIG_KEYS})
        if config.monitor is None:
            config.monitor = monitor
    else:
        config = SchedulerConfig(sched, monitor=monitor)
    name = type(config.scheduler).__name__
    config.reduce_on_plateau = config.reduce_on_plateau or isinstance(config.scheduler, ReduceLROnPlateau)
    if config.interval not in ("step", "epoch"):
        raise ConfigError(f"{where}: lr_scheduler interval={config.interval!r} must be 'step' or 'epoch'")
    if isinstance(config.frequency, bool) or not isinstance(config.frequency, int) or config.frequency < 1:
        raise ConfigError(f"{where}: lr_scheduler frequency={config.frequency!r} must be an int >= 1")
    if not (callable(getattr(config.scheduler, "state_dict", None))
            and callable(getattr(config.scheduler, "load_state_dict", None))):
        raise ConfigError(f"{where}: the scheduler {name} has no state_dict/load_state_dict, so a resumed run "
                          "could not continue its schedule; use a torch.optim.lr_scheduler class")
    if automatic and config.reduce_on_plateau and config.monitor is None:
        raise ConfigError(
            f"{where}: {name} (ReduceLROnPlateau) needs a monitor: return {{'optimizer': opt, 'lr_scheduler': "
            "{'scheduler': sched, 'monitor': 'val_loss'}} with the name of a logged metric")
    if not automatic and (config.monitor is not None or not config.strict):
        log.warning("%s: 'monitor' and 'strict' of %s are ignored in manual optimization: call its step() yourself",
                    where, name)
    return config


def step_schedulers(
    configs: Iterable[SchedulerConfig],
    interval: str,
    count: int,
    plateau: bool,
    metrics: dict[str, Any],
    step: Callable[[Any, Any], None],
) -> None:
    """Step the schedulers of `interval` whose frequency divides `count` (the batch index in the
    epoch or the epoch, from 1): the ReduceLROnPlateau ones when `plateau`, else the others.
    `step(scheduler, metric)` is the module's `lr_scheduler_step` hook."""
    for config in configs:
        if config.reduce_on_plateau != plateau or config.interval != interval or count % config.frequency:
            continue
        metric = None
        if config.reduce_on_plateau:
            metric = metrics.get(config.monitor)
            if metric is None:
                available = ", ".join(sorted(metrics)) or "nothing logged yet"
                message = (f"{type(config.scheduler).__name__} monitor={config.monitor!r} is not among the logged "
                           f"metrics (available: {available})")
                if config.strict:
                    raise UserError(f"{message}; log it with self.log({config.monitor!r}, ...), or set 'strict': "
                                    "False in the scheduler config to skip updates without it")
                log.warning("%s and 'strict' is False: the learning rate is not updated this time", message)
                continue
        step(config.scheduler, metric)


class StepThrough:
    """What `module.optimizers()` hands out: the optimizer itself for everything but `step()`,
    which goes through the Trainer (gradients averaged over processes, the GradScaler,
    `on_before_optimizer_step`, global_step). It passes `isinstance` checks for the class it wraps."""

    _classes: dict[type, type] = {}

    def __init__(self, optimizer: Optimizer, step: Callable[..., Any]) -> None:
        self._optimizer = optimizer
        self._step = step
        cls = type(optimizer)
        if cls not in StepThrough._classes:
            StepThrough._classes[cls] = type(f"StepThrough{cls.__name__}", (StepThrough, cls), {})
        self.__class__ = StepThrough._classes[cls]

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        return self._step(self._optimizer, closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_optimizer"], name)

    def __repr__(self) -> str:
        return repr(self._optimizer)


def unwrap(optimizer: Any) -> Optimizer:
    return optimizer.optimizer if isinstance(optimizer, StepThrough) else optimizer


def parameters_of(optimizer: Any) -> list[torch.Tensor]:
    return [p for group in unwrap(optimizer).param_groups for p in group["params"]]


# -- toggling: only the current optimizer's parameters compute gradients -------------------------
def toggle(optimizers: list[Optimizer], optimizer: Any) -> dict[torch.Tensor, bool]:
    """Switch off `requires_grad` of every parameter that belongs to another optimizer only;
    returns the flags as they were, for `untoggle`."""
    saved: dict[torch.Tensor, bool] = {}
    for opt in optimizers:
        for p in parameters_of(opt):
            if p not in saved:
                saved[p] = p.requires_grad
                p.requires_grad = False
    for p in parameters_of(optimizer):
        p.requires_grad = saved[p]
    return saved


def untoggle(optimizers: list[Optimizer], optimizer: Any, saved: dict[torch.Tensor, bool]) -> None:
    current = unwrap(optimizer)
    for opt in optimizers:
        if opt is not current:
            for p in parameters_of(opt):
                if p in saved:
                    p.requires_grad = saved[p]


@contextlib.contextmanager
def toggled(module: Any, optimizer: Any) -> Iterator[None]:
    module.toggle_optimizer(optimizer)
    try:
        yield
    finally:
        module.untoggle_optimizer(optimizer)
