"""Stochastic Weight Averaging by epochs, as Lightning's StochasticWeightAveraging.

    Trainer(max_epochs=10, callbacks=[StochasticWeightAveraging(swa_lrs=1e-2, swa_epoch_start=0.8)])

From epoch `swa_start` (`swa_epoch_start`: an epoch number from 1, or a fraction of `max_epochs`)
the learning rate follows torch's `SWALR` (annealed to `swa_lrs` over `annealing_epochs`, "cos"
or "linear"), replacing the module's scheduler as Lightning does, and at the start of each epoch
up to the last the average takes in the weights as they are (`avg_fn`, by default the running
mean). When training ends the model receives the averaged weights; a model with batch norm then
gets its running statistics recomputed with one pass over the training data (Lightning runs that
pass as an extra epoch; here it runs inside `on_train_end`, forward only, with the batch's first
element as input, as `torch.optim.swa_utils.update_bn` does). Validation runs on the current
weights. The average, its count and the SWA schedule are saved for exact resume.

One optimizer, at most one scheduler, `max_epochs` set; not under FSDP.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.swa_utils import SWALR

from trainkit.callbacks.weight_averaging import refuse_sharded
from trainkit.engine.callback import Callback
from trainkit.engine.optimizers import SchedulerConfig
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")


def _running_mean(average: torch.Tensor, current: torch.Tensor, n_averaged: torch.Tensor) -> torch.Tensor:
    return average + (current - average) / (n_averaged + 1)


class StochasticWeightAveraging(Callback):
    def __init__(
        self,
        swa_lrs: float | list[float],
        swa_epoch_start: int | float = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: str = "cos",
        avg_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str | None = torch.device("cpu"),
    ) -> None:
        if isinstance(swa_epoch_start, int) and swa_epoch_start < 1 or (
                isinstance(swa_epoch_start, float) and not 0 <= swa_epoch_start <= 1):
            raise ConfigError(f"StochasticWeightAveraging(swa_epoch_start={swa_epoch_start}) must be an int >= 1 "
                              "or a float in [0, 1]")
        lrs = swa_lrs if isinstance(swa_lrs, list) else [swa_lrs]
        if not isinstance(swa_lrs, (float, list)) or not all(isinstance(lr, float) and lr > 0 for lr in lrs):
            raise ConfigError(f"StochasticWeightAveraging(swa_lrs={swa_lrs!r}) must be a positive float or a list "
                              "of them (one per parameter group)")
        if annealing_strategy not in ("cos", "linear"):
            raise ConfigError(f"StochasticWeightAveraging(annealing_strategy={annealing_strategy!r}) must be 'cos' "
                              "or 'linear'")
        self._swa_epoch_start = swa_epoch_start
        self._swa_lrs = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn or _running_mean
        self._device = device
        self._average_model: nn.Module | None = None
        self.n_averaged: torch.Tensor | None = None
        self._latest_update_epoch = -1
        self._swa_scheduler: SWALR | None = None
        self._scheduler_state: dict[str, Any] | None = None
        self._steps_itself = False  # no module scheduler to replace: this callback steps SWALR
        self._latest_scheduler_epoch = -1
        self._max_epochs = 0
        self._initialized = False

    @property
    def swa_start(self) -> int:
        return max(self._swa_epoch_start - 1, 0)  # 0-based

    @property
    def swa_end(self) -> int:
        return self._max_epochs - 1

    def setup(self, trainer, module, stage) -> None:
        if stage != "fit":
            return
        refuse_sharded(trainer, "StochasticWeightAveraging")
        held = module.__dict__.get("_trainer")
        object.__setattr__(module, "_trainer", None)  # the copy must not take the Trainer along
        try:
            self._average_model = copy.deepcopy(module)
        finally:
            object.__setattr__(module, "_trainer", held)

    def on_fit_start(self, trainer, module) -> None:
        if len(trainer.optimizers) != 1:
            raise ConfigError("StochasticWeightAveraging works with one optimizer; configure_optimizers returns "
                              f"{len(trainer.optimizers)}")
        if len(trainer.lr_scheduler_configs) > 1:
            raise ConfigError("StochasticWeightAveraging replaces one scheduler; configure_optimizers returns "
                              f"{len(trainer.lr_scheduler_configs)}")
        if trainer.max_epochs is None:
            raise ConfigError("StochasticWeightAveraging needs Trainer(max_epochs=...): it averages by epochs")
        if isinstance(self._swa_epoch_start, float):
            self._swa_epoch_start = int(trainer.max_epochs * self._swa_epoch_start)
        self._max_epochs = trainer.max_epochs

    def on_train_epoch_start(self, trainer, module) -> None:
        epoch = trainer.current_epoch
        if not self._initialized and self.swa_start <= epoch <= self.swa_end:
            self._start_schedule(trainer, module)
        if self.swa_start <= epoch <= self.swa_end and epoch > self._latest_update_epoch:
            self._update(module)
            self._latest_update_epoch = epoch

    def _start_schedule(self, trainer, module) -> None:
        self._initialized = True
        self._average_model = self._average_model.to(self._device or next(module.parameters()).device)
        optimizer = trainer.optimizers[0]
        resumed_lrs = [group["lr"] for group in optimizer.param_groups]  # as the checkpoint left them
        lrs = self._swa_lrs if isinstance(self._swa_lrs, list) else [self._swa_lrs] * len(optimizer.param_groups)
        for lr, group in zip(lrs, optimizer.param_groups):
            group["initial_lr"] = lr
        self._swa_scheduler = SWALR(optimizer, swa_lr=lrs, anneal_epochs=self._annealing_epochs,
                                    anneal_strategy=self._annealing_strategy,
                                    last_epoch=trainer.max_epochs if self._annealing_strategy == "cos" else -1)
        if self._scheduler_state is not None:  # resumed: the schedule continues where it was
            self._swa_scheduler.load_state_dict(self._scheduler_state)
            for lr, group in zip(resumed_lrs, optimizer.param_groups):
                group["lr"] = lr
        configs = trainer.lr_scheduler_configs
        if configs:
            log.info("StochasticWeightAveraging: %s is replaced by SWALR from epoch %d",
                     type(configs[0].scheduler).__name__, trainer.current_epoch)
            configs[0] = SchedulerConfig(self._swa_scheduler)  # stepped by the Trainer at each epoch's end
        else:
            self._steps_itself = True
        if self.n_averaged is None:
            self.n_averaged = torch.tensor(0, dtype=torch.long)

    def on_train_epoch_end(self, trainer, module) -> None:
        # (Once per epoch: a run resumed at an epoch's end replays this hook.)
        if self._steps_itself and trainer.current_epoch > self._latest_scheduler_epoch:
            self._swa_scheduler.step()
            self._latest_scheduler_epoch = trainer.current_epoch

    def on_train_end(self, trainer, module) -> None:
        if not self._initialized or trainer.current_epoch - 1 != self.swa_end:
            return  # stopped before its last epoch (or SWA never began): the weights stay as trained
        for average, current in zip(self._average_model.parameters(), module.parameters()):
            current.detach().copy_(average.to(current.device))
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
            self._update_batch_norm(trainer, module)

    def _update(self, module: nn.Module) -> None:
        for average, current in zip(self._average_model.parameters(), module.parameters()):
            current = current.detach().to(average.device)
            n = self.n_averaged.to(average.device)
            average.detach().copy_(current if self.n_averaged == 0 else self._avg_fn(average.detach(), current, n))
        self.n_averaged += 1

    @torch.no_grad()
    def _update_batch_norm(self, trainer, module: nn.Module) -> None:
        norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = {m: m.momentum for m in norms}
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the pass
        was_training = module.training
        module.train()
        for batch in trainer.train_dataloader:
            batch = trainer.strategy.batch_to_device(trainer.precision.convert_input(batch))
            with trainer.precision.autocast():
                module(batch[0] if isinstance(batch, (list, tuple)) else batch)
        for m in norms:
            m.momentum = momenta[m]
        module.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": 0 if self.n_averaged is None else int(self.n_averaged),
            "latest_update_epoch": self._latest_update_epoch,
            "latest_scheduler_epoch": self._latest_scheduler_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_model_state": None if self._average_model is None else self._average_model.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_averaged = torch.tensor(state["n_averaged"], dtype=torch.long) if state["scheduler_state"] else None
        self._latest_update_epoch = state["latest_update_epoch"]
        self._latest_scheduler_epoch = state["latest_scheduler_epoch"]
        self._scheduler_state = state["scheduler_state"]
        if self._average_model is not None and state["average_model_state"] is not None:
            self._average_model.load_state_dict(state["average_model_state"])
