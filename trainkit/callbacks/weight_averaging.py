"""An averaged copy of the weights, updated after optimizer steps: Lightning 2.6's WeightAveraging.

    Trainer(callbacks=[EMAWeightAveraging(decay=0.999)])          # exponential moving average
    Trainer(callbacks=[WeightAveraging()])                         # equal-weight average (SWA) of every step

The copy is a `torch.optim.swa_utils.AveragedModel` (parameters and, with `use_buffers=True`,
buffers). `should_update(step_idx=, epoch_idx=)` says when to update it; by default after every
optimizer step. Validation runs on the averaged weights (they are swapped in and out around it),
and when training ends the model keeps them.

Checkpoints hold the averaged weights as the model's weights — what `load_from_checkpoint`,
`trainer.test(ckpt_path=...)` and `trainkit export` read — and the callback's state keeps the
current weights and the average's step count, so a resumed run continues both exactly.

Not under FSDP: the averaged copy would have to be sharded like the model; trainkit refuses that
combination with an error rather than gathering the model on every rank.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Any, Iterator

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from trainkit.engine.callback import Callback
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")


def averaged_copy(module: torch.nn.Module, **kwargs: Any) -> AveragedModel:
    """An AveragedModel of a TrainModule, without copying the Trainer it is attached to."""
    trainer = module.__dict__.get("_trainer")
    object.__setattr__(module, "_trainer", None)
    try:
        return AveragedModel(module, **kwargs)
    finally:
        object.__setattr__(module, "_trainer", trainer)


def refuse_sharded(trainer, owner: str) -> None:
    if trainer.strategy.forward_in_lockstep:  # FSDP: each rank holds a shard of every parameter
        raise ConfigError(f"{owner} does not support strategy=fsdp (the averaged copy is not sharded); use "
                          "strategy=ddp or a single device")


def _tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    return itertools.chain(module.parameters(), module.buffers())


class WeightAveraging(Callback):
    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True, **kwargs: Any) -> None:
        self._device = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._kwargs = kwargs  # avg_fn / multi_avg_fn, passed to AveragedModel
        self._average_model: AveragedModel | None = None
        self._module: torch.nn.Module | None = None
        self._swapped = False  # True while the module holds the averaged weights (validation, saving)
        # Optimizer steps taken at the last update: 0, so the first update follows the first step.
        self._latest_update_step = 0
        self._latest_update_epoch = -1

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Whether to update after the optimizer step `step_idx` or the epoch `epoch_idx` (0-based;
        one of them is given). By default after every step."""
        return step_idx is not None

    @property
    def average_model(self) -> AveragedModel | None:
        return self._average_model

    def setup(self, trainer, module, stage) -> None:
        if stage != "fit":
            return
        refuse_sharded(trainer, type(self).__name__)
        device = self._device if self._device is not None else next(module.parameters()).device
        self._module = module
        self._average_model = averaged_copy(module, device=device, use_buffers=self._use_buffers, **self._kwargs)

    def teardown(self, trainer, module, stage) -> None:
        if stage == "fit":
            self._module = None  # the copy is kept (for inspection); the module is the user's again

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            self._average_model.update_parameters(module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer, module) -> None:
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            self._average_model.update_parameters(module)
            self._latest_update_epoch = trainer.current_epoch

    def on_train_end(self, trainer, module) -> None:
        for average, current in zip(_tensors(self._average_model.module), _tensors(module)):
            current.data.copy_(average.data)

    def on_validation_epoch_start(self, trainer, module) -> None:
        if self._average_model is not None and trainer.state.stage == "fit":
            self._swap(module)

    def on_validation_epoch_end(self, trainer, module) -> None:
        if self._average_model is not None and trainer.state.stage == "fit":
            self._swap(module)

    def _swap(self, module: torch.nn.Module) -> None:
        for average, current in zip(_tensors(self._average_model.module), _tensors(module)):
            held = average.data.clone()
            average.data.copy_(current.data)
            current.data.copy_(held)
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """While saving a checkpoint: the module holds the averaged weights (they are what the
        checkpoint's model weights are), `state_dict()` the current ones."""
        if self._average_model is None or self._module is None or self._swapped:
            yield
            return
        self._swap(self._module)
        try:
            yield
        finally:
            self._swap(self._module)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"latest_update_step": self._latest_update_step,
                                 "latest_update_epoch": self._latest_update_epoch}
        if self._average_model is not None and self._module is not None:
            holder = self._average_model.module if self._swapped else self._module
            state["current_model_state"] = {k: v.detach().clone() for k, v in holder.state_dict().items()}
            state["n_averaged"] = self._average_model.n_averaged.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._latest_update_step = state["latest_update_step"]
        self._latest_update_epoch = state["latest_update_epoch"]
        if self._average_model is None or self._module is None or "current_model_state" not in state:
            return
        # The checkpoint's model weights, just loaded into the module, are the average.
        self._average_model.module.load_state_dict(self._module.state_dict())
        self._module.load_state_dict(state["current_model_state"])
        self._average_model.n_averaged.copy_(state["n_averaged"])


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average: `average = decay * average + (1 - decay) * weights`, the
    first update copying the weights; every `update_every_n_steps` steps from
    `update_starting_at_step`, and (if `update_starting_at_epoch` is set) after epochs from it."""

    def __init__(
        self,
        device: torch.device | str | int | None = None,
        use_buffers: bool = True,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"EMAWeightAveraging(decay={decay}) must be in [0, 1]")
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=get_ema_avg_fn(decay=decay), **kwargs)
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            if started and self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0:
                return True
        if epoch_idx is not None:
            return self.update_starting_at_epoch is not None and epoch_idx >= self.update_starting_at_epoch
        return False
