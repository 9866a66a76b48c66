"""What both tuners share: a short `fit` through the real Trainer, and putting things back after.

`short_trainer` copies a configured Trainer's loop settings (strategy, precision, accumulation,
clipping, seed, compile, optimizer factory) into a new Trainer that trains `max_steps` optimizer
steps with the tuner's callback and nothing else: no validation, checkpoints, loggers or resume.
The tuners see every step through ordinary callback hooks (`on_before_optimizer_step`,
`on_train_batch_end`), so the Trainer needs no tuning mode of its own.

`kept_state` restores what a short fit changes: the module's weights and buffers, the given
trainer's optimizer state (when it has one), the precision's GradScaler, the RNG streams and the
module's link to its trainer.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError


def short_trainer(trainer: Any, callbacks: list[Callback], max_steps: int) -> Any:
    from trainkit.engine.trainer import Trainer

    if trainer.world_size > 1:
        raise ConfigError("the tuners run in one process: drop trainer.devices/num_nodes (the batch size they find "
                          "is per device; give the learning rate to a several-process run as it is, or scaled)")
    return Trainer(
        strategy=trainer.strategy,
        precision=trainer.precision,
        max_epochs=None,
        max_steps=max_steps,
        limit_train_batches=trainer.limit_train_batches,
        limit_val_batches=0,
        accumulate_grad_batches=trainer.accumulate_grad_batches,
        gradient_clip_val=trainer.gradient_clip_val,
        gradient_clip_algorithm=trainer.gradient_clip_algorithm,
        seed=trainer.seed,
        deterministic=trainer.deterministic,
        compile=trainer.compile,
        detect_anomaly=trainer.detect_anomaly,
        resume="none",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=trainer.default_root_dir,
        optimizer=trainer.optimizer_factory,
        scheduler=None,  # the LR finder sets the LR of every step itself; timing needs no schedule
    )


@contextlib.contextmanager
def kept_state(trainer: Any, module: torch.nn.Module) -> Iterator[None]:
    from trainkit.engine.rng import capture_rng, restore_rng

    def current() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    weights = current()
    if not weights:  # layers built in configure_model by the first short fit: keep the weights they start with
        configure = module.configure_model

        def configure_and_keep() -> None:
            configure()
            weights.update(current())

        object.__setattr__(module, "configure_model", configure_and_keep)  # this instance only, until the end
    optimizer = copy.deepcopy(trainer.optimizer.state_dict()) if trainer.optimizer is not None else None
    precision = copy.deepcopy(trainer.precision.state_dict())
    rng = capture_rng()
    had_link, linked = "_trainer" in module.__dict__, module.__dict__.get("_trainer")
    try:
        yield
    finally:
        module.__dict__.pop("configure_model", None)
        module.load_state_dict(weights)
        if optimizer is not None:
            trainer.optimizer.load_state_dict(optimizer)
        trainer.precision.load_state_dict(precision)
        restore_rng(rng)
        if had_link:
            object.__setattr__(module, "_trainer", linked)


def step_loss(outputs: Any) -> float:
    loss = outputs if isinstance(outputs, torch.Tensor) else outputs["loss"]
    return float(loss.detach())
