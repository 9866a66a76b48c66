"""Optimizers and schedulers: building them, the automatic optimizer step, and the manual one.

The optimizers come from the module's `configure_optimizers()` (any of Lightning's return forms,
read by optimizers.py) or, when the module does not define it, from the Trainer's `optimizer=` /
`scheduler=` factories (the CLI's config groups).

Automatic optimization (one optimizer), in Lightning's order: unscale, the
`on_before_optimizer_step` hooks, clip, step (the precision may skip it), `on_before_zero_grad`,
zero the grads, count it, then the schedulers due at this batch.

Manual optimization (`module.automatic_optimization = False`, as many optimizers as returned):
`training_step` calls `self.manual_backward(loss)` and `opt.step()` on what `self.optimizers()`
gives. Each `step()` averages that optimizer's gradients over the processes if a backward ran
since (under DDP: the loop does not go through DDP's forward, whose reducer expects one backward
over all parameters per forward), runs the hooks and the GradScaler, and counts one global step,
as Lightning 2.x does. Schedulers are the user's to step (`self.lr_schedulers()`).
"""
from __future__ import annotations

import inspect
import logging
import math
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import torch

from trainkit.engine import optimizers as forms
from trainkit.engine.module import TrainModule
from trainkit.errors import ConfigError, UserError

if TYPE_CHECKING:
    from trainkit.engine.trainer import Trainer

log = logging.getLogger("trainkit")


def configure_optimizers(trainer: Trainer, module: TrainModule) -> None:
    """Set `trainer.optimizers`, `trainer.lr_scheduler_configs` and the handles `module.optimizers()` gives."""
    automatic = module.automatic_optimization
    if not automatic:
        _check_manual(trainer)
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
    trainer.optimizers, trainer.lr_scheduler_configs = forms.parse(result, automatic, type(module).__name__)
    step = partial(manual_step if not automatic else _handle_step, trainer)
    trainer._step_through = [forms.StepThrough(opt, step) for opt in trainer.optimizers]
    trainer._unsynced = set()
    # Lightning hooks a module may override to change the automatic step; looked up once.
    trainer._clips_itself = _overrides(module, "configure_gradient_clipping")
    trainer._steps_itself = _overrides(module, "optimizer_step")
    trainer._zeroes_itself = _overrides(module, "optimizer_zero_grad")


def _overrides(module: TrainModule, hook: str) -> bool:
    return getattr(type(module), hook) is not getattr(TrainModule, hook)


def _check_manual(trainer: Trainer) -> None:
    if trainer.gradient_clip_val:
        raise ConfigError(
            f"trainer.gradient_clip_val={trainer.gradient_clip_val} does not apply to manual optimization (as in "
            "Lightning): remove it, and clip in training_step with self.clip_gradients(opt, gradient_clip_val=..., "
            "gradient_clip_algorithm='norm') before opt.step()")
    if trainer.spike_guard is not None:
        raise ConfigError("trainer.spike_guard skips steps of automatic optimization; with manual optimization, "
                          "skip opt.step() in training_step yourself, or set trainer.spike_guard=null")
    if trainer.accumulate_grad_batches != 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} does not apply to manual optimization "
            "(as in Lightning): remove it, and step the optimizers every k batches in training_step yourself")


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


# -- automatic optimization -----------------------------------------------------------------------
def optimizer_step(trainer: Trainer, batch_idx: int, last_batch: bool) -> None:
    """One automatic optimizer step on the accumulated gradients, then the schedulers due now
    (those of interval "epoch" at the epoch's last batch: before its validation and checkpoint).
    A module's own `optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)` runs instead
    when it defines one (its `optimizer.step(closure=...)` does the rest; the closure has nothing
    left to do: forward and backward ran already)."""
    module = trainer._module
    skip = trainer.spike_guard is not None and trainer.spike_guard.should_skip(trainer)
    stepped = not skip
    for handle in trainer._step_through:  # one, or none when configure_optimizers returned None
        optimizer = handle.optimizer
        if skip:
            pass  # a loss spike: the gradients are dropped
        elif trainer._steps_itself:
            trainer._stepped = True
            module.optimizer_step(trainer.state.epoch, batch_idx, handle, _nothing)
            stepped = trainer._stepped
        else:
            stepped = _automatic_step(trainer, optimizer)
        trainer._call("on_before_zero_grad", optimizer)
        if trainer._zeroes_itself:
            module.optimizer_zero_grad(trainer.state.epoch, batch_idx, optimizer)
        else:
            optimizer.zero_grad(set_to_none=True)
    trainer.state.global_step += 1
    configs = trainer.lr_scheduler_configs
    if configs:
        if stepped:  # a step the GradScaler skipped must not advance the schedule
            forms.step_schedulers(configs, "step", batch_idx + 1, False, trainer.callback_metrics,
                                  module.lr_scheduler_step)
        if last_batch:
            epoch_schedulers(trainer, plateau=False)


def _automatic_step(trainer: Trainer, optimizer: torch.optim.Optimizer) -> bool:
    """Hooks, clip, step (Lightning's order); False when the GradScaler skipped the step."""
    hooks = trainer.hooks.targets("on_before_optimizer_step")
    if hooks:  # 16-mixed: the hooks see the true gradients (unscaled once; clipping then reuses them)
        trainer.precision.unscale_gradients(optimizer)
    for fn in hooks:
        fn(optimizer)
    norms = trainer.grad_norms if trainer.grad_norms.due(trainer) else None
    clip = trainer.gradient_clip_val is not None and trainer.gradient_clip_val > 0 and not trainer._clips_itself
    if norms is not None and not (clip and trainer.gradient_clip_algorithm == "norm"):
        trainer.precision.unscale_gradients(optimizer)
        norms.record(optimizer, None)  # computed: no clipping by norm computes it (before any clipping)
    if trainer._clips_itself:
        trainer._module.configure_gradient_clipping(optimizer, trainer.gradient_clip_val,
                                                    trainer.gradient_clip_algorithm)
    elif clip:
        clipped = _clip(trainer, optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        if norms is not None and clipped is not None:
            norms.record(optimizer, clipped)
    return trainer.precision.optimizer_step(optimizer)


def _handle_step(trainer: Trainer, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None) -> Any:
    """`optimizer.step()` inside a module's own `optimizer_step` (automatic optimization)."""
    result = closure() if closure is not None else None
    trainer._stepped = _automatic_step(trainer, optimizer)
    return result


def _nothing() -> None:
    return None


def plateau_step(trainer: Trainer, batch_idx: int) -> None:
    """ReduceLROnPlateau schedulers of interval "step": after the step's validation."""
    if trainer.lr_scheduler_configs and trainer._module.automatic_optimization:
        forms.step_schedulers(trainer.lr_scheduler_configs, "step", batch_idx + 1, True, trainer.callback_metrics,
                              trainer._module.lr_scheduler_step)


def epoch_schedulers(trainer: Trainer, plateau: bool) -> None:
    """Schedulers of interval "epoch" (ReduceLROnPlateau ones when `plateau`: after the epoch's end hooks)."""
    if trainer.lr_scheduler_configs and trainer._module.automatic_optimization:
        forms.step_schedulers(trainer.lr_scheduler_configs, "epoch", trainer.state.epoch + 1, plateau,
                              trainer.callback_metrics, trainer._module.lr_scheduler_step)


# -- manual optimization --------------------------------------------------------------------------
def manual_backward(trainer: Trainer, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    if trainer._module.automatic_optimization:
        raise UserError(f"{type(trainer._module).__name__}.manual_backward() is for manual optimization: set "
                        "`self.automatic_optimization = False` in __init__, or return the loss from training_step "
                        "and let the Trainer run backward")
    trainer._call("on_before_backward", loss)
    trainer.precision.backward(loss, *args, **kwargs)
    trainer._call("on_after_backward")
    trainer._unsynced = {id(opt) for opt in trainer.optimizers}


def manual_step(trainer: Trainer, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None) -> Any:
    """`opt.step()` of a handle from `module.optimizers()`."""
    result = closure() if closure is not None else None
    _sync(trainer, optimizer)
    trainer._call("on_before_optimizer_step", optimizer)
    trainer.precision.optimizer_step(optimizer)
    trainer.state.global_step += 1  # every step() counts, skipped by the GradScaler or not (Lightning)
    return result


def clip_gradients(trainer: Trainer, optimizer: Any, value: float | None, algorithm: str | None) -> None:
    """`module.clip_gradients`: Lightning's argument rules, then unscale and clip."""
    if value is None:
        value = trainer.gradient_clip_val or 0.0
    elif trainer.gradient_clip_val is not None and trainer.gradient_clip_val != value:
        raise ConfigError(f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) and clip_gradients("
                          f"gradient_clip_val={value}) disagree; give only one of them")
    algorithm = (algorithm or trainer.gradient_clip_algorithm or "norm").lower()
    if algorithm not in ("norm", "value"):
        raise ConfigError(f"clip_gradients(gradient_clip_algorithm={algorithm!r}) must be 'norm' or 'value'")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"clip_gradients(gradient_clip_val={value!r}) must be a number")
    optimizer = forms.unwrap(optimizer)
    _sync(trainer, optimizer)
    if value > 0:
        _clip(trainer, optimizer, value, algorithm)


def _clip(trainer: Trainer, optimizer: torch.optim.Optimizer, value: float, algorithm: str) -> torch.Tensor | None:
    """Unscale and clip; the total norm before clipping when clipping by norm."""
    trainer.precision.unscale_gradients(optimizer)
    params = [p for p in forms.parameters_of(optimizer) if p.grad is not None]
    return trainer.strategy.clip_gradients(params, value, algorithm)


def _sync(trainer: Trainer, optimizer: torch.optim.Optimizer) -> None:
    """Average this optimizer's gradients over the processes once after each manual backward."""
    if id(optimizer) in trainer._unsynced:
        trainer._unsynced.discard(id(optimizer))
        trainer.strategy.average_gradients([p for p in forms.parameters_of(optimizer) if p.grad is not None])
