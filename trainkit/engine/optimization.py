"""Optimizers and schedulers: building them, and the automatic optimizer step.

The optimizer comes from the module's `configure_optimizers()` or, when the module does not
define it, from the Trainer's `optimizer=` / `scheduler=` factories (the CLI's config groups).
One automatic step: unscale and clip, the `on_before_optimizer_step` hooks, step (the precision
may skip it), zero the grads, count it, and step a per-step scheduler.
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import TYPE_CHECKING, Any

import torch

from trainkit.engine.module import TrainModule
from trainkit.errors import ConfigError, UserError

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

log = logging.getLogger("trainkit")


def configure_optimizers(trainer: Trainer, module: TrainModule) -> None:
    """Set the trainer's optimizer, scheduler, and the scheduler's interval and frequency."""
    if type(module).configure_optimizers is not TrainModule.configure_optimizers:
        if trainer.optimizer_factory is not None:
            log.info("%s.configure_optimizers() builds the optimizer; the optimizer config is not used",
                     type(module).__name__)
        result = module.configure_optimizers()
    elif trainer.optimizer_factory is not None:
        optimizer = trainer.optimizer_factory(module.parameters())
        result = {"optimizer": optimizer}
        if trainer.scheduler_factory is not None:
            result["lr_scheduler"] = {"scheduler": _build_scheduler(trainer, optimizer), "interval": "step"}
    else:
        raise UserError(
            f"{type(module).__name__} has no optimizer: define configure_optimizers() or pass Trainer(optimizer=...)"
        )
    if isinstance(result, torch.optim.Optimizer):
        result = {"optimizer": result}
    trainer.optimizer = result["optimizer"]
    sched = result.get("lr_scheduler")
    if isinstance(sched, dict):
        trainer.lr_scheduler = sched["scheduler"]
        trainer.scheduler_interval = sched.get("interval", "epoch")
        trainer.scheduler_frequency = sched.get("frequency", 1)
    else:
        trainer.lr_scheduler, trainer.scheduler_interval, trainer.scheduler_frequency = sched, "epoch", 1
    if trainer.scheduler_interval not in ("step", "epoch"):
        raise UserError(f"lr_scheduler interval={trainer.scheduler_interval!r} must be 'step' or 'epoch'")


def _build_scheduler(trainer: Trainer, optimizer: torch.optim.Optimizer) -> Any:
    # Schedules such as warmup-cosine need the run's length; give it to those that ask.
    factory = trainer.scheduler_factory
    if "total_steps" in inspect.signature(factory).parameters:
        if math.isinf(trainer.estimated_stepping_batches):
            raise ConfigError("this scheduler needs the run's length: set trainer.max_steps or trainer.max_epochs")
        return factory(optimizer, total_steps=int(trainer.estimated_stepping_batches))
    return factory(optimizer)


def estimate_stepping_batches(trainer: Trainer) -> int | float:
    """Optimizer steps the whole fit will take (infinity when nothing bounds it)."""
    batches = trainer.num_training_batches
    per_epoch = math.inf if math.isinf(batches) else math.ceil(batches / trainer.accumulate_grad_batches)
    by_epochs = per_epoch * trainer.max_epochs if trainer.max_epochs is not None else math.inf
    return min(by_epochs, trainer.max_steps) if trainer.max_steps > -1 else by_epochs


def optimizer_step(trainer: Trainer) -> None:
    """One automatic optimizer step on the accumulated gradients."""
    optimizer = trainer.optimizer
    if trainer.gradient_clip_val is not None and trainer.gradient_clip_val > 0:
        trainer.precision.unscale_gradients(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        trainer.strategy.clip_gradients(params, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
    for cb in trainer._batch_hooks["on_before_optimizer_step"]:
        cb.on_before_optimizer_step(trainer, trainer._module, optimizer)
    stepped = trainer.precision.optimizer_step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    trainer.state.global_step += 1
    # A step the GradScaler skipped must not advance the schedule.
    if stepped and trainer.lr_scheduler is not None and trainer.scheduler_interval == "step":
        if trainer.state.global_step % trainer.scheduler_frequency == 0:
            trainer.lr_scheduler.step()


def epoch_end_scheduler_step(trainer: Trainer) -> None:
    """Step a per-epoch scheduler at the end of the epoch that just finished."""
    if trainer.lr_scheduler is not None and trainer.scheduler_interval == "epoch":
        if (trainer.state.epoch + 1) % trainer.scheduler_frequency == 0:
            trainer.lr_scheduler.step()
